// EMA codebook statistics and update on the CPU (PUT supp. eq. 2).
//
// ema_statistics: counts[k] = #{r : idx[r] = k}, sums[k] = sum of those rows of x, read
// in one pass, streamed in row order, without the N x K one-hot the papers' code builds. The
// rows are cut into fixed chunks (ema_accumulate.h), each streamed into its own partial
// sums by one thread; the partials are then added in chunk order. The order depends
// only on (N, K), so every run and thread count gives the same bits.
// Built twice, portable and AVX-512, one picked at run time (isa.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "isa.h"

VQFAST_ISA_TARGET_BEGIN
#include "ema_accumulate.h"

namespace vqfast {
namespace VQFAST_ISA {
namespace {

using ema::add_row;

constexpr int64_t kSerialElements = 1 << 16;  // below this many x elements one thread is faster

// sums [K, d] (and `partials` [(C - 1), K, d]) from x [N, d], idx [N]: chunk c's
// partial is sums for c = 0, else partials[c - 1]. The first column block of each chunk
// also counts its rows into counts [C, K]. Returns the first row whose idx is out of
// [0, K) (N if none; its chunk is then not accumulated) so that the caller raises.
template <typename T>
int64_t accumulate(const T* x, const int64_t* idx, int64_t N, int64_t K, int64_t d, int64_t C, float* sums,
                   float* partials, int64_t* counts) {
  const int64_t threads = at::get_num_threads();
  const bool parallel = N * std::max<int64_t>(d, 1) >= kSerialElements && threads > 1;
  const int64_t col_block = parallel ? ema::column_block(d, C, threads) : d;
  const int64_t n_cols = d == 0 ? 1 : (d + col_block - 1) / col_block, tasks = C * n_cols;
  std::vector<int64_t> first_bad(tasks, N);
  at::parallel_for(0, tasks, parallel ? 1 : tasks, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c = t / n_cols, c0 = (t % n_cols) * col_block, w = std::min(col_block, d - c0);
      const int64_t r0 = ema::chunk_begin(N, C, c), r1 = ema::chunk_begin(N, C, c + 1);
      // idx is validated here, in the pass (no separate scan), and counted in its own
      // loop: folded into the row loop below it cost that loop ~10%.
      int64_t* cnt = counts + c * K;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t k = idx[r];
        if (k < 0 || k >= K) {
          first_bad[t] = r;
          break;
        }
        if (c0 == 0) ++cnt[k];
      }
      if (first_bad[t] < N) continue;
      float* acc = c == 0 ? sums : partials + (c - 1) * K * d;
      ema::zero_columns(acc, K, d, c0, w);
      ema::add_rows(x, idx, r0, r1, d, c0, w, acc);
    }
  });
  ema::add_partials(sums, partials, C - 1, K, d, parallel && K * d >= kSerialElements);
  return *std::min_element(first_bad.begin(), first_bad.end());
}

}  // namespace

// x [N, d] contiguous fp32/fp16/bf16, idx [N] int64 contiguous in [0, K) ->
// counts [K] fp32, sums [K, d] fp32. Extra memory: at most (kMaxChunks - 1) K d floats.
std::tuple<at::Tensor, at::Tensor> ema_statistics_cpu(const at::Tensor& x, const at::Tensor& idx, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && idx.dim() == 1 && idx.size(0) == x.size(0), "ema_statistics_cpu: x [N, d], idx [N]");
  TORCH_CHECK(idx.scalar_type() == at::kLong, "ema_statistics_cpu: int64 idx expected");
  TORCH_CHECK(K >= 1, "ema_statistics_cpu: K >= 1 expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              "ema_statistics_cpu: x must be fp32, fp16 or bf16");
  const int64_t N = x.size(0), d = x.size(1);
  auto xc = x.contiguous();
  auto ic = idx.contiguous();
  const int64_t* ip = ic.data_ptr<int64_t>();
  const int64_t C = ema::stat_chunks(N, K);
  std::vector<float> partials((C - 1) * K * d);
  std::vector<int64_t> counts(C * K, 0);
  auto sums = at::empty({K, d}, x.options().dtype(at::kFloat));
  float* sp = sums.data_ptr<float>();
  int64_t bad;
  switch (xc.scalar_type()) {
    case at::kFloat: bad = accumulate(xc.data_ptr<float>(), ip, N, K, d, C, sp, partials.data(), counts.data()); break;
    case at::kHalf: bad = accumulate(xc.data_ptr<at::Half>(), ip, N, K, d, C, sp, partials.data(), counts.data()); break;
    default: bad = accumulate(xc.data_ptr<at::BFloat16>(), ip, N, K, d, C, sp, partials.data(), counts.data()); break;
  }
  TORCH_CHECK_VALUE(bad == N, "idx values must be in [0, K=", K, "), got idx[", bad, "] = ", bad < N ? ip[bad] : 0);
  auto counts_t = at::empty({K}, x.options().dtype(at::kFloat));
  float* cp = counts_t.data_ptr<float>();
  for (int64_t k = 0; k < K; ++k) {
    int64_t n = 0;
    for (int64_t c = 0; c < C; ++c) n += counts[c * K + k];
    cp[k] = static_cast<float>(n);
  }
  return {counts_t, sums};
}

// PUT eq. 2 with Laplace smoothing, in place on cluster_size [K] and embed_sum [K, d]
// (fp32, contiguous); returns codebook [K, d] = embed_sum / smoothed(cluster_size).
at::Tensor ema_update_cpu(at::Tensor cluster_size, at::Tensor embed_sum, const at::Tensor& counts,
                          const at::Tensor& sums, double decay, double eps) {
  TORCH_CHECK(cluster_size.is_contiguous() && embed_sum.is_contiguous(), "ema_update_cpu: contiguous state expected");
  TORCH_CHECK(cluster_size.scalar_type() == at::kFloat && embed_sum.scalar_type() == at::kFloat &&
                  counts.scalar_type() == at::kFloat && sums.scalar_type() == at::kFloat,
              "ema_update_cpu: fp32 tensors expected");
  const int64_t K = embed_sum.size(0), d = embed_sum.size(1);
  TORCH_CHECK(cluster_size.numel() == K && counts.numel() == K && sums.numel() == K * d, "ema_update_cpu: shapes");
  auto cc = counts.contiguous();
  auto sc = sums.contiguous();
  const float g = static_cast<float>(decay), h = static_cast<float>(1.0 - decay), e = static_cast<float>(eps);
  float* n = cluster_size.data_ptr<float>();
  const float* c = cc.data_ptr<float>();
  double total = 0.0;  // fixed serial order: the same bits on every run and rank
  for (int64_t k = 0; k < K; ++k) {
    n[k] = g * n[k] + h * c[k];
    total += n[k];
  }
  const float tot = static_cast<float>(total), denom = tot + static_cast<float>(K) * e;
  auto out = at::empty({K, d}, embed_sum.options());
  float* s = embed_sum.data_ptr<float>();
  const float* ss = sc.data_ptr<float>();
  float* o = out.data_ptr<float>();
  // A parallel region costs more than this pass over K x d state until it is large.
  const int64_t grain = K * d < kSerialElements * 16 ? K : 64;
  at::parallel_for(0, K, grain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const float smoothed = e == 0.0f ? n[k] : (n[k] + e) / denom * tot;  // eps = 0: PUT eq. 2's s / n
      float* sk = s + k * d;
      const float* tk = ss + k * d;
      float* ok = o + k * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) {
        sk[j] = g * sk[j] + h * tk[j];
        ok[j] = sk[j] / smoothed;
      }
    }
  });
  return out;
}

}  // namespace VQFAST_ISA
}  // namespace vqfast
VQFAST_ISA_TARGET_END

#if !VQFAST_AVX512
VQFAST_AVX512_DECLARE(ema_statistics_cpu)
VQFAST_AVX512_DECLARE(ema_update_cpu)

TORCH_LIBRARY_FRAGMENT(vqfast_cpu, m) {
  m.def("ema_statistics(Tensor x, Tensor idx, int K) -> (Tensor, Tensor)");
  m.def("ema_update_(Tensor(a!) cluster_size, Tensor(b!) embed_sum, Tensor counts, Tensor sums, float decay, "
        "float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(vqfast_cpu, CPU, m) {
  m.impl("ema_statistics", VQFAST_ISA_PICK(ema_statistics_cpu));
  m.impl("ema_update_", VQFAST_ISA_PICK(ema_update_cpu));
}
#endif
