// EMA codebook statistics and update on the CPU (DESIGN.md op 5, PUT supp. eq. 2).
//
// ema_statistics: counts[k] = #{r : idx[r] = k}, sums[k] = sum of those rows of x, read
// in one pass without the N x K one-hot the seeds build. The rows are counting-sorted
// by code (O(N) indices, x itself is not moved); each code's sum is then accumulated
// in a buffer that stays in L1 and stored once, so the only large traffic is reading
// x, its rows prefetched ahead (one thread: x is streamed in row order instead, see
// accumulate_in_row_order). Deterministic for every thread count: codes are split
// into ranges that own their rows of `sums`, and every sum adds its member rows in
// increasing row order (each element is accumulated independently, so vector width
// does not change the bits either). When few ranges exist (one giant cluster), the
// columns are split as well, which keeps that order.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace vqfast {
namespace {

constexpr int64_t kMinCols = 16;  // narrowest column block: one 64-byte line of fp32 sums
// Rows ahead of the current one to prefetch (the sorted rows are scattered in x; 8 was
// 1.3x faster than 4 single-threaded here, 12 and 16 no better).
constexpr int64_t kPrefetchAhead = 8;

inline void add_row(float* __restrict acc, const float* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) acc[j] += x[j];
}

inline void add_row(float* __restrict acc, const c10::BFloat16* __restrict x, int64_t n) {
  const uint16_t* xs = reinterpret_cast<const uint16_t*>(x);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    uint32_t bits = static_cast<uint32_t>(xs[j]) << 16;  // bf16 -> fp32 is exact
    float f;
    std::memcpy(&f, &bits, sizeof f);
    acc[j] += f;
  }
}

inline void add_row(float* __restrict acc, const c10::Half* __restrict x, int64_t n) {
  int64_t j = 0;
#if defined(__AVX512F__)
  const uint16_t* xs = reinterpret_cast<const uint16_t*>(x);
  for (; j + 16 <= n; j += 16) {
    __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + j)));
    _mm512_storeu_ps(acc + j, _mm512_add_ps(_mm512_loadu_ps(acc + j), v));
  }
#elif defined(__F16C__)
  const uint16_t* xs = reinterpret_cast<const uint16_t*>(x);
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xs + j)));
    _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), v));
  }
#endif
  for (; j < n; ++j) acc[j] += static_cast<float>(x[j]);
}

// Splits codes [0, K) into at most `want` ranges of about N / want member rows each.
// Returns range boundaries (size R + 1).
std::vector<int64_t> code_ranges(const std::vector<int64_t>& counts, int64_t N, int64_t want) {
  const int64_t K = static_cast<int64_t>(counts.size());
  std::vector<int64_t> bounds{0};
  int64_t seen = 0;
  for (int64_t k = 0; k < K; ++k) {
    seen += counts[k];
    const int64_t r = static_cast<int64_t>(bounds.size());  // ranges closed so far + 1
    if (k + 1 < K && r < want && seen * want >= r * N) bounds.push_back(k + 1);
  }
  bounds.push_back(K);
  return bounds;
}

constexpr int64_t kSerialElements = 1 << 16;  // below this many x elements one thread is faster

// rows: row indices sorted by code (code k's members are rows[code_start[k] ..
// code_start[k + 1]), in increasing order); bounds: the code ranges (tasks).
template <typename T>
void accumulate(const T* x, const int64_t* rows, const int64_t* code_start, int64_t n_ranges,
                const int64_t* bounds, int64_t d, int64_t col_block, float* sums) {
  const int64_t n_cols = (d + col_block - 1) / col_block, tasks = n_ranges * n_cols;
  const int64_t grain = code_start[bounds[n_ranges]] * d < kSerialElements ? tasks : 1;
  at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> acc(col_block);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t range = t / n_cols, c0 = (t % n_cols) * col_block;
      const int64_t w = std::min(col_block, d - c0);
      const int64_t end = code_start[bounds[range + 1]];
      for (int64_t k = bounds[range]; k < bounds[range + 1]; ++k) {
        std::fill_n(acc.data(), w, 0.0f);
        for (int64_t i = code_start[k]; i < code_start[k + 1]; ++i) {
          if (i + kPrefetchAhead < end) {  // across code boundaries: the next codes' rows too
            const char* p = reinterpret_cast<const char*>(x + rows[i + kPrefetchAhead] * d + c0);
            for (int64_t b = 0; b < static_cast<int64_t>(w * sizeof(T)); b += 64) __builtin_prefetch(p + b);
          }
          add_row(acc.data(), x + rows[i] * d + c0, w);
        }
        std::copy_n(acc.data(), w, sums + k * d + c0);
      }
    }
  });
}

// One thread: rows in x order, each added into its code's sum (x and idx are streamed
// sequentially; the sums stay in cache). Every element still adds its member rows in
// increasing row order, so the bits equal `accumulate`'s (1.1x faster single-threaded
// at N=65536 K=1024 d=256; with more threads the sorted ranges scale, this does not).
template <typename T>
void accumulate_in_row_order(const T* x, const int64_t* idx, int64_t N, int64_t K, int64_t d, float* sums) {
  std::fill_n(sums, K * d, 0.0f);
  for (int64_t r = 0; r < N; ++r) add_row(sums + idx[r] * d, x + r * d, d);
}

}  // namespace

// x [N, d] contiguous fp32/fp16/bf16, idx [N] int64 contiguous in [0, K) ->
// counts [K] fp32, sums [K, d] fp32. Extra memory: O(N + K) indices.
std::tuple<at::Tensor, at::Tensor> ema_statistics_cpu(const at::Tensor& x, const at::Tensor& idx, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && idx.dim() == 1 && idx.size(0) == x.size(0), "ema_statistics_cpu: x [N, d], idx [N]");
  TORCH_CHECK(idx.scalar_type() == at::kLong, "ema_statistics_cpu: int64 idx expected");
  TORCH_CHECK(K >= 1, "ema_statistics_cpu: K >= 1 expected");
  const int64_t N = x.size(0), d = x.size(1);
  auto xc = x.contiguous();
  auto ic = idx.contiguous();
  const int64_t* ip = ic.data_ptr<int64_t>();
  std::vector<int64_t> counts(K, 0);
  for (int64_t r = 0; r < N; ++r) {
    const int64_t k = ip[r];
    TORCH_CHECK_VALUE(k >= 0 && k < K, "idx values must be in [0, K=", K, "), got idx[", r, "] = ", k);
    ++counts[k];
  }
  auto counts_t = at::empty({K}, x.options().dtype(at::kFloat));
  float* cp = counts_t.data_ptr<float>();
  for (int64_t k = 0; k < K; ++k) cp[k] = static_cast<float>(counts[k]);
  auto sums = at::empty({K, d}, x.options().dtype(at::kFloat));
  if (d == 0) return {counts_t, sums};
  float* sp = sums.data_ptr<float>();
  const int64_t threads = at::get_num_threads();
  if (threads == 1) {
    switch (xc.scalar_type()) {
      case at::kFloat: accumulate_in_row_order(xc.data_ptr<float>(), ip, N, K, d, sp); break;
      case at::kHalf: accumulate_in_row_order(xc.data_ptr<at::Half>(), ip, N, K, d, sp); break;
      case at::kBFloat16: accumulate_in_row_order(xc.data_ptr<at::BFloat16>(), ip, N, K, d, sp); break;
      default: TORCH_CHECK(false, "ema_statistics_cpu: x must be fp32, fp16 or bf16");
    }
    return {counts_t, sums};
  }

  // Rows counting-sorted by code (stable: increasing row order within a code), and
  // ranges of codes with balanced membership as the parallel tasks.
  std::vector<int64_t> code_start(K + 1, 0);
  for (int64_t k = 0; k < K; ++k) code_start[k + 1] = code_start[k] + counts[k];
  std::vector<int64_t> fill(code_start.begin(), code_start.end() - 1), rows(std::max<int64_t>(N, 1));
  for (int64_t r = 0; r < N; ++r) rows[fill[ip[r]]++] = r;
  std::vector<int64_t> bounds = code_ranges(counts, N, 4 * threads);
  const int64_t R = static_cast<int64_t>(bounds.size()) - 1;

  // Too few ranges to feed every thread twice: split the columns too.
  int64_t n_cols = std::min((2 * threads + R - 1) / R, (d + kMinCols - 1) / kMinCols);
  n_cols = std::max<int64_t>(n_cols, 1);
  const int64_t col_block = ((d + n_cols - 1) / n_cols + kMinCols - 1) / kMinCols * kMinCols;

  switch (xc.scalar_type()) {
    case at::kFloat:
      accumulate(xc.data_ptr<float>(), rows.data(), code_start.data(), R, bounds.data(), d, col_block, sp);
      break;
    case at::kHalf:
      accumulate(xc.data_ptr<at::Half>(), rows.data(), code_start.data(), R, bounds.data(), d, col_block, sp);
      break;
    case at::kBFloat16:
      accumulate(xc.data_ptr<at::BFloat16>(), rows.data(), code_start.data(), R, bounds.data(), d, col_block, sp);
      break;
    default:
      TORCH_CHECK(false, "ema_statistics_cpu: x must be fp32, fp16 or bf16");
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
      const float smoothed = e == 0.0f ? n[k] : (n[k] + e) / denom * tot;  // eps = 0: the seed's s / n
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

TORCH_LIBRARY_FRAGMENT(vqfast_cpu, m) {
  m.def("ema_statistics(Tensor x, Tensor idx, int K) -> (Tensor, Tensor)");
  m.def("ema_update_(Tensor(a!) cluster_size, Tensor(b!) embed_sum, Tensor counts, Tensor sums, float decay, "
        "float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(vqfast_cpu, CPU, m) {
  m.impl("ema_statistics", &ema_statistics_cpu);
  m.impl("ema_update_", &ema_update_cpu);
}

}  // namespace vqfast
