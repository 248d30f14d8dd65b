// nearest_code and quantize on the CPU: rows split into blocks
// across threads, each block searched by the exact core of search_core.h; quantize
// gathers the chosen codes in the same pass. Extra memory is O(threads * block).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include "search_core.h"

#include <type_traits>

namespace vqfast::cpu {

void check_search_args(const at::Tensor& x, const at::Tensor& codebook, int64_t metric, const char* op) {
  TORCH_CHECK(x.dim() == 2 && codebook.dim() == 2 && x.size(1) == codebook.size(1), op,
              ": x [N, d] and codebook [K, d] expected");
  TORCH_CHECK(codebook.size(0) >= 1, op, ": empty codebook");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) && x.scalar_type() != at::kDouble, op, ": x must be fp32/fp16/bf16");
  TORCH_CHECK(at::isFloatingType(codebook.scalar_type()) && codebook.scalar_type() != at::kDouble, op,
              ": codebook must be fp32/fp16/bf16");
  TORCH_CHECK(metric == kL2 || metric == kCosine, op, ": unknown metric ", metric);
}

bool use_bf16(const at::Tensor& x, const at::Tensor& codebook) {
  return x.scalar_type() == at::kBFloat16 && codebook.scalar_type() == at::kBFloat16 && cpu_has_bf16_dot();
}

namespace {

// ||x - z||^2 in float64 (z as stored, in its own dtype).
template <typename scalar_t>
double squared_error(const float* x, const scalar_t* z, int64_t d) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < d; ++i) {
    const double t = static_cast<double>(x[i]) - static_cast<double>(static_cast<float>(z[i]));
    s += t * t;
  }
  return s;
}

}  // namespace

void gather_codes(const Codebook& cb, const int64_t* idx, int64_t rn, at::Tensor& z_q, int64_t r0,
                  const int64_t* out_rows, const Rows* rows, double* sq_err, const float* dist) {
  const int64_t d = cb.d;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z_q.scalar_type(), "vqfast_gather_codes", [&] {
    scalar_t* out = z_q.data_ptr<scalar_t>() + r0 * d;
    for (int64_t r = 0; r < rn; ++r) {
      const int64_t o = out_rows ? out_rows[r] : r;
      scalar_t* dst = out + o * d;
      const float* c = cb.p_raw + idx[r] * d;
      for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<scalar_t>(c[i]);
      if (!sq_err) continue;
      // l2 into an fp32 z_q: the search's exact distance is this row's squared error already.
      sq_err[r0 + o] = dist && cb.metric == kL2 && std::is_same_v<scalar_t, float>
                           ? static_cast<double>(dist[r])
                           : squared_error(rows->row32(r), dst, d);
    }
  });
}

namespace {

// Searches every row (blocks across threads); writes dist when given, z_q (and the
// per-row squared error sq_err) when given.
void search_all(const at::Tensor& xc, const Codebook& cb, int64_t* idx, float* dist, at::Tensor* z_q,
                double* sq_err = nullptr) {
  const int64_t N = xc.size(0), rows = block_rows(N);
  at::parallel_for(0, (N + rows - 1) / rows, 1, [&](int64_t b0, int64_t b1) {
    RowBuffers buf;
    std::vector<float> own_dist(dist ? 0 : rows);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rows, rn = std::min(rows, N - r0);
      float* dst = dist ? dist + r0 : own_dist.data();
      const Rows block = load_rows(xc, r0, rn, cb, buf);
      search_rows(cb, block, idx + r0, dst);
      if (z_q) gather_codes(cb, idx + r0, rn, *z_q, r0, nullptr, &block, sq_err, dst);
    }
  });
}

}  // namespace

// x [N, d], codebook [K, d] (fp32/fp16/bf16, raw: cosine normalization happens here).
// Returns idx [N] int64, dist [N] fp32.
std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& x, const at::Tensor& codebook, int64_t metric) {
  check_search_args(x, codebook, metric, "nearest_code_cpu");
  auto xc = x.contiguous();
  auto idx = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  auto dist = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  if (x.size(0) == 0) return {idx, dist};
  const Codebook cb = prepare_codebook(codebook, metric, use_bf16(xc, codebook));
  search_all(xc, cb, idx.data_ptr<int64_t>(), dist.data_ptr<float>(), nullptr);
  return {idx, dist};
}

// Search and gather fused: returns z_q [N, d] (x's dtype) = codebook[idx], idx [N] and
// sq_err [N] fp64 = ||x - z_q||^2 per row (the commitment loss is sq_err.sum() / x.numel()).
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_cpu(const at::Tensor& x, const at::Tensor& codebook,
                                                            int64_t metric) {
  check_search_args(x, codebook, metric, "quantize_cpu");
  auto xc = x.contiguous();
  auto idx = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  auto sq_err = at::empty({x.size(0)}, x.options().dtype(at::kDouble));
  auto z_q = at::empty_like(xc);
  if (x.size(0) == 0) return {z_q, idx, sq_err};
  const Codebook cb = prepare_codebook(codebook, metric, use_bf16(xc, codebook));
  search_all(xc, cb, idx.data_ptr<int64_t>(), nullptr, &z_q, sq_err.data_ptr<double>());
  return {z_q, idx, sq_err};
}

TORCH_LIBRARY_FRAGMENT(vqfast_cpu, m) {
  m.def("nearest_code(Tensor x, Tensor codebook, int metric) -> (Tensor, Tensor)");
  m.def("quantize(Tensor x, Tensor codebook, int metric) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vqfast_cpu, CPU, m) {
  m.impl("nearest_code", &nearest_code_cpu);
  m.impl("quantize", &quantize_cpu);
}

}  // namespace vqfast::cpu
