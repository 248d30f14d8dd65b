// residual_quantize on the CPU (RQ-VAE): each block of rows keeps
// its fp32 residual and running code sum in a thread-local buffer through all depth
// levels (r_i = r_{i-1} - c_{k_i}); every level is one exact search of search_core.h.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include "search_core.h"

namespace vqfast::cpu {

// x [N, d], codebook [K, d] (shared) or [depth, K, d] -> z_q [N, d] (x's dtype; the
// codes summed in fp32 in level order), idx [N, depth].
std::tuple<at::Tensor, at::Tensor> residual_quantize_cpu(const at::Tensor& x, const at::Tensor& codebook,
                                                         int64_t depth, int64_t metric) {
  TORCH_CHECK(depth >= 1, "residual_quantize_cpu: depth must be >= 1");
  TORCH_CHECK(codebook.dim() == 2 || (codebook.dim() == 3 && codebook.size(0) == depth),
              "residual_quantize_cpu: codebook [K, d] or [depth, K, d] expected");
  const at::Tensor level0 = codebook.dim() == 3 ? codebook[0] : codebook;
  check_search_args(x, level0, metric, "residual_quantize_cpu");
  auto xc = x.contiguous();
  const int64_t N = x.size(0), d = x.size(1);
  auto idx = at::empty({N, depth}, x.options().dtype(at::kLong));
  auto z_q = at::empty_like(xc);
  if (N == 0) return {z_q, idx};
  // Residuals are fp32 after the first level: every level searches fp32 codes.
  std::vector<Codebook> cbs;
  for (int64_t l = 0; l < (codebook.dim() == 3 ? depth : 1); ++l)
    cbs.push_back(prepare_codebook(codebook.dim() == 3 ? codebook[l] : codebook, metric, false));
  int64_t* idx_p = idx.data_ptr<int64_t>();
  const int64_t rows = block_rows(N);
  at::parallel_for(0, (N + rows - 1) / rows, 1, [&](int64_t b0, int64_t b1) {
    RowBuffers buf;
    std::vector<float> total(rows * d), dist(rows);
    std::vector<int64_t> found(rows);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rows, rn = std::min(rows, N - r0);
      const Rows first = load_rows(xc, r0, rn, cbs[0], buf);
      std::vector<float>& r = buf.x32;  // the residual, updated in place
      if (first.x32 != r.data()) r.assign(first.x32, first.x32 + rn * d);
      std::fill(total.begin(), total.begin() + rn * d, 0.f);
      Rows res;
      res.x32 = r.data();
      res.ldx = d;
      res.n = rn;
      for (int64_t l = 0; l < depth; ++l) {
        const Codebook& cb = cbs[codebook.dim() == 3 ? l : 0];
        search_rows(cb, res, found.data(), dist.data());
        const float* raw = cb.raw.data_ptr<float>();
        for (int64_t q = 0; q < rn; ++q) {
          const float* c = raw + found[q] * d;
          float* rq = r.data() + q * d;
          float* tq = total.data() + q * d;
          for (int64_t i = 0; i < d; ++i) rq[i] -= c[i], tq[i] += c[i];
          idx_p[(r0 + q) * depth + l] = found[q];
        }
      }
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z_q.scalar_type(), "vqfast_residual_out", [&] {
        scalar_t* out = z_q.data_ptr<scalar_t>() + r0 * d;
        for (int64_t i = 0; i < rn * d; ++i) out[i] = static_cast<scalar_t>(total[i]);
      });
    }
  });
  return {z_q, idx};
}

TORCH_LIBRARY_FRAGMENT(vqfast_cpu, m) {
  m.def("residual_quantize(Tensor x, Tensor codebook, int depth, int metric) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vqfast_cpu, CPU, m) { m.impl("residual_quantize", &residual_quantize_cpu); }

}  // namespace vqfast::cpu
