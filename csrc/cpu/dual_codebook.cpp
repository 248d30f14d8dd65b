// dual_codebook_quantize on the CPU (PUT Sec. 2-3): one pass over
// row blocks; inside a block the visible rows are searched in e and the masked rows
// in e2 (block-local routing by index, no row copy or global gather/scatter), with the
// code gather and the commitment loss's per-row squared error fused.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include "search_core.h"

namespace vqfast::cpu {

// x [N, d], visible [N] bool, e [K, d], e2 [K2, d] -> z_q [N, d] (x's dtype),
// idx [N] (masked rows: e2 index + K), sq_err [N] fp64 = ||x - z_q||^2 per row.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dual_codebook_quantize_cpu(const at::Tensor& x,
                                                                          const at::Tensor& visible,
                                                                          const at::Tensor& e, const at::Tensor& e2,
                                                                          int64_t metric) {
  check_search_args(x, e, metric, "dual_codebook_quantize_cpu");
  check_search_args(x, e2, metric, "dual_codebook_quantize_cpu");
  TORCH_CHECK(visible.dim() == 1 && visible.size(0) == x.size(0) && visible.scalar_type() == at::kBool,
              "dual_codebook_quantize_cpu: visible [N] bool expected");
  auto xc = x.contiguous();
  auto vis = visible.contiguous();
  const int64_t N = x.size(0), K = e.size(0);
  auto idx = at::empty({N}, x.options().dtype(at::kLong));
  auto sq_err = at::empty({N}, x.options().dtype(at::kDouble));
  auto z_q = at::empty_like(xc);
  if (N == 0) return {z_q, idx, sq_err};
  const Codebook cbs[2] = {prepare_codebook(e, metric, use_bf16(xc, e)),
                           prepare_codebook(e2, metric, use_bf16(xc, e2))};
  const bool* v = vis.data_ptr<bool>();
  int64_t* idx_p = idx.data_ptr<int64_t>();
  double* err_p = sq_err.data_ptr<double>();
  // Rows are routed in blocks of up to 4 search blocks, so each side's rows fill whole
  // search blocks (full micro-tiles) as in one nearest_code pass.
  const int64_t rows = block_rows(N), threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t route = std::min(4 * rows, std::max(rows, (N + threads - 1) / threads));
  at::parallel_for(0, (N + route - 1) / route, 1, [&](int64_t b0, int64_t b1) {
    RowBuffers buf;
    std::vector<int64_t> members(route), found(rows);
    std::vector<float> dist(rows);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * route, rn = std::min(route, N - r0);
      // The block once as the search wants it (no copy for fp32 x), then the searches per side.
      Rows block = load_rows(xc, r0, rn, cbs[1].bf16 ? cbs[1] : cbs[0], buf);  // bf16 rows if either side wants them
      for (int side = 0; side < 2; ++side) {  // 0: visible rows -> e; 1: masked rows -> e2
        int64_t m = 0;
        for (int64_t r = 0; r < rn; ++r)
          if (v[r0 + r] == (side == 0)) members[m++] = r;
        const Codebook& cb = cbs[side];
        const int64_t offset = side == 0 ? 0 : K;
        for (int64_t q0 = 0; q0 < m; q0 += rows) {
          Rows part = block;
          part.n = std::min(rows, m - q0);
          part.index = members.data() + q0;
          search_rows(cb, part, found.data(), dist.data());
          gather_codes(cb, found.data(), part.n, z_q, r0, part.index, &part, err_p, dist.data());
          for (int64_t q = 0; q < part.n; ++q) idx_p[r0 + part.index[q]] = found[q] + offset;
        }
      }
    }
  });
  return {z_q, idx, sq_err};
}

TORCH_LIBRARY_FRAGMENT(vqfast_cpu, m) {
  m.def("dual_codebook_quantize(Tensor x, Tensor visible, Tensor e, Tensor e2, int metric) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vqfast_cpu, CPU, m) { m.impl("dual_codebook_quantize", &dual_codebook_quantize_cpu); }

}  // namespace vqfast::cpu
