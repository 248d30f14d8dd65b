// Nearest-codebook search on the CPU (DESIGN.md op 1), FAISS-style exhaustive search:
// each thread takes a block of rows, multiplies it by a block of codes with a
// single-threaded GEMM into a cache-sized scratch, and keeps a running argmin. The
// N x K distance matrix is never held; extra memory is O(threads * BLOCK_N * BLOCK_K).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "vqfast/argmin.h"

namespace vqfast {
namespace {

constexpr int64_t kBlockN = 128;   // rows per task
constexpr int64_t kBlockK = 1024;  // codes per GEMM tile: 128 x 1024 fp32 = 512 KiB

// Metric codes shared with vqfast/ops/nearest_code.py.
constexpr int64_t kL2 = 0;
constexpr int64_t kCosine = 1;

// Scans one row of GEMM output (dots with codes k0..k0+n) and updates the running best.
// score_k = c_sq[k] - 2 dot (l2) or -dot (cosine, codes pre-normalized).
inline void scan_row(const float* dots, const float* c_sq, int64_t n, int64_t k0,
                     bool l2, float& best, int64_t& best_i) {
  float m = std::numeric_limits<float>::infinity();
  if (l2) {
#pragma omp simd reduction(min : m)
    for (int64_t k = 0; k < n; ++k) m = std::min(m, c_sq[k] - 2.0f * dots[k]);
  } else {
#pragma omp simd reduction(min : m)
    for (int64_t k = 0; k < n; ++k) m = std::min(m, -dots[k]);
  }
  if (!(m < best)) return;  // ties across tiles keep the earlier (lower) index
  for (int64_t k = 0; k < n; ++k) {
    float s = l2 ? c_sq[k] - 2.0f * dots[k] : -dots[k];
    if (s == m) {
      best = m;
      best_i = k0 + k;
      return;
    }
  }
}

}  // namespace

// x [N, d] (fp32/fp16/bf16, contiguous), codebook [K, d] fp32 contiguous (rows
// L2-normalized by the caller when metric is cosine). Returns idx [N] int64, dist [N] fp32.
std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& x, const at::Tensor& codebook,
                                                    int64_t metric) {
  TORCH_CHECK(x.dim() == 2 && codebook.dim() == 2 && x.size(1) == codebook.size(1),
              "nearest_code_cpu: x [N, d] and codebook [K, d] expected");
  TORCH_CHECK(codebook.scalar_type() == at::kFloat, "nearest_code_cpu: fp32 codebook expected");
  TORCH_CHECK(metric == kL2 || metric == kCosine, "nearest_code_cpu: unknown metric");
  const int64_t N = x.size(0), K = codebook.size(0);
  auto xc = x.contiguous();
  auto cb = codebook.contiguous();
  auto idx = at::empty({N}, x.options().dtype(at::kLong));
  auto dist = at::empty({N}, x.options().dtype(at::kFloat));
  if (N == 0) return {idx, dist};
  const bool l2 = metric == kL2;
  auto c_sq = cb.square().sum(1).contiguous();
  const float* c_sq_p = c_sq.data_ptr<float>();
  int64_t* idx_p = idx.data_ptr<int64_t>();
  float* dist_p = dist.data_ptr<float>();

  const int64_t n_blocks = (N + kBlockN - 1) / kBlockN;
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    auto scratch = at::empty({kBlockN, std::min(kBlockK, K)}, cb.options());
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kBlockN, rn = std::min(kBlockN, N - r0);
      auto xb = xc.narrow(0, r0, rn).to(at::kFloat).contiguous();
      auto x_sq = xb.square().sum(1);
      const float* x_sq_p = x_sq.data_ptr<float>();
      float best[kBlockN];
      int64_t best_i[kBlockN];
      for (int64_t r = 0; r < rn; ++r) {
        best[r] = std::numeric_limits<float>::infinity();
        best_i[r] = 0;
      }
      for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
        const int64_t kn = std::min(kBlockK, K - k0);
        auto out = scratch.narrow(0, 0, rn).narrow(1, 0, kn);
        at::mm_out(out, xb, cb.narrow(0, k0, kn).t());
        const float* dots = out.data_ptr<float>();
        const int64_t ld = out.stride(0);
        for (int64_t r = 0; r < rn; ++r)
          scan_row(dots + r * ld, c_sq_p + k0, kn, k0, l2, best[r], best_i[r]);
      }
      for (int64_t r = 0; r < rn; ++r) {
        const float xs = x_sq_p[r];
        if (!std::isfinite(xs)) {  // rows with NaN/inf: documented as idx 0, dist NaN
          idx_p[r0 + r] = 0;
          dist_p[r0 + r] = std::numeric_limits<float>::quiet_NaN();
          continue;
        }
        idx_p[r0 + r] = best_i[r];
        dist_p[r0 + r] = l2 ? l2_from_dot(xs, 0.0f, best[r] + 0.0f) : 1.0f + best[r] / std::max(std::sqrt(xs), 1e-12f);
      }
    }
  });
  return {idx, dist};
}

TORCH_LIBRARY_FRAGMENT(vqfast_cpu, m) {
  m.def("nearest_code(Tensor x, Tensor codebook, int metric) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vqfast_cpu, CPU, m) { m.impl("nearest_code", &nearest_code_cpu); }

}  // namespace vqfast
