// Per-row building blocks of the CPU samplers (csrc/cpu/sampling.cpp): loading a row of
// logits as float32, max / argmax / sum-exp, an exact Gumbel-max with chunk pruning,
// top-k thresholds and the top-p nucleus. Every loop over V is a vectorizable
// `omp simd` loop; the row stays in a thread-local scratch, so the logits are read
// from memory once. Include only from files compiled with fp-contract off.
#pragma once
#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "vqfast/philox.h"

namespace vqfast {
namespace sampling {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr uint32_t kStreamToken = 1;       // vqfast/_random.py STREAM_TOKEN
constexpr uint32_t kStreamConfidence = 2;  // vqfast/_random.py STREAM_CONFIDENCE
constexpr int kChunk = 256;                // elements per Gumbel chunk (one prune test each)

// n values of src (fp32/fp16/bf16) -> float32 dst.
inline void to_float(const void* src, at::ScalarType dtype, int64_t n, float* dst) {
  if (dtype == at::kFloat) {
    std::memcpy(dst, src, n * sizeof(float));
  } else if (dtype == at::kBFloat16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = bits_to_float(static_cast<uint32_t>(s[i]) << 16);
  } else {
    const at::Half* s = static_cast<const at::Half*>(src);
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
#endif
    for (; i < n; ++i) dst[i] = static_cast<float>(s[i]);
  }
}

// exp(d) for d <= 0 or -inf (Cephes expf polynomial, branch-free; ~1 ulp). Used only
// for sums (logsumexp), never for noise, so it need not match other backends bit for bit.
inline float exp_nonpos(float d) {
  const float c = std::max(d, -87.0f);
  // round to nearest by the 1.5 * 2^23 trick: std::floor keeps GCC from vectorizing
  const float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = c - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return d < -87.0f ? 0.0f : p * scale;
}

struct RowStats {
  float max;       // max_v x[v]
  int64_t argmax;  // lowest v with x[v] == max
  bool bad;        // NaN or +inf present, or no finite value
};

inline RowStats row_stats(const float* x, int64_t n) {
  float m = -kInf;
  int bad = 0;
#pragma omp simd reduction(max : m) reduction(| : bad)
  for (int64_t v = 0; v < n; ++v) {
    const float xv = x[v];
    m = xv > m ? xv : m;
    bad |= static_cast<int>(xv != xv) | static_cast<int>(xv == kInf);
  }
  RowStats st{m, 0, bad != 0 || m == -kInf};
  if (st.bad) return st;
  while (x[st.argmax] != m) ++st.argmax;
  return st;
}

// sum_v exp(x[v] - m): 16 float32 lane sums per block of 256 values, blocks added in
// float64 (a float32 running sum over V = 16384 drifts by ~1e-5 relative). Explicit
// lanes, not `omp simd reduction`, which GCC leaves scalar here.
inline float sum_exp(const float* x, int64_t n, float m) {
  constexpr int kLanes = 16, kBlock = 256;
  double total = 0.0;
  int64_t v0 = 0;
  for (; v0 + kBlock <= n; v0 += kBlock) {
    alignas(64) float acc[kLanes] = {};
    for (int i = 0; i < kBlock; i += kLanes)
      for (int j = 0; j < kLanes; ++j) acc[j] += exp_nonpos(x[v0 + i + j] - m);
    float s = 0.0f;
    for (int j = 0; j < kLanes; ++j) s += acc[j];
    total += s;
  }
  for (; v0 < n; ++v0) total += exp_nonpos(x[v0] - m);
  return static_cast<float>(total);
}

// An upper bound on every Gumbel value the noise map can give (u <= 1 - 2^-24).
inline float gumbel_bound() {
  static const float bound = gumbel_from_word(0xFFFFFFFFu) + 1e-3f;
  return bound;
}

// argmax_v x[v] + gumbel(key, STREAM_TOKEN, base + v), ties to the lowest v; -inf
// entries never win. `start` is any index with finite x (the argmax): it seeds the
// running best, and chunks whose max cannot reach it skip their noise, exactly,
// since the noise is bounded above by gumbel_bound().
inline int64_t gumbel_argmax(const float* x, int64_t n, uint64_t key, uint64_t base, int64_t start) {
  float best = x[start] + gumbel_from_word(philox::element_word(key, kStreamToken, base + start));
  int64_t best_i = start;
  const float bound = gumbel_bound();
  alignas(64) uint32_t w[kChunk];
  alignas(64) float sc[kChunk];
  for (int64_t v0 = 0; v0 < n; v0 += kChunk) {
    const int cn = static_cast<int>(std::min<int64_t>(kChunk, n - v0));
    const float* xc = x + v0;
    float cm = -kInf;
#pragma omp simd reduction(max : cm)
    for (int i = 0; i < cn; ++i) cm = xc[i] > cm ? xc[i] : cm;
    if (cm + bound < best) continue;
    philox::fill_words(key, kStreamToken, base + v0, cn, w);
    for (int i = 0; i < cn; ++i) sc[i] = xc[i] + gumbel_from_word(w[i]);
    float sm = -kInf;
#pragma omp simd reduction(max : sm)
    for (int i = 0; i < cn; ++i) sm = sc[i] > sm ? sc[i] : sm;
    if (sm < best || (sm == best && v0 > best_i)) continue;
    int i = 0;
    while (sc[i] != sm) ++i;
    if (sm > best || v0 + i < best_i) {
      best = sm;
      best_i = v0 + i;
    }
  }
  return best_i;
}

// gumbel_argmax over the few finite entries of y listed in ids (ascending): one Philox
// call per id instead of noise for every chunk that holds one of them.
inline int64_t gumbel_argmax_ids(const float* y, const std::vector<int64_t>& ids, uint64_t key, uint64_t base) {
  float best = -kInf;
  int64_t best_i = ids.empty() ? 0 : ids[0];
  for (const int64_t v : ids) {
    const float s = y[v] + gumbel_from_word(philox::element_word(key, kStreamToken, base + v));
    if (s > best) {  // ids ascend: ties keep the lower id
      best = s;
      best_i = v;
    }
  }
  return best_i;
}

// The k-th largest value of x[0..n) (1 <= k <= n, no NaN). A strided sample picks a
// pivot with about 2k values above it, so the exact selection runs on few elements.
inline float kth_largest(const float* x, int64_t n, int64_t k, std::vector<float>& tmp) {
  tmp.resize(n);
  constexpr int64_t kStride = 16;
  const int64_t ns = n / kStride;
  if (ns >= 64 && 2 * k + 8 < n / 4) {
    for (int64_t j = 0; j < ns; ++j) tmp[j] = x[j * kStride];
    const int64_t rs = std::min(ns - 1, 2 * k / kStride + 4);
    std::nth_element(tmp.begin(), tmp.begin() + rs, tmp.begin() + ns, std::greater<float>());
    const float pivot = tmp[rs];
    int64_t cnt = 0;
    for (int64_t v = 0; v < n; ++v) {
      tmp[cnt] = x[v];
      cnt += x[v] >= pivot;
    }
    if (cnt >= k) {
      std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.begin() + cnt, std::greater<float>());
      return tmp[k - 1];
    }
  }
  std::copy(x, x + n, tmp.begin());
  std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
  return tmp[k - 1];
}

// y = x restricted to its top k (ties: lower index), others -inf.
inline void keep_top_k(const float* x, int64_t n, int64_t k, float* y, std::vector<float>& tmp) {
  const float t = kth_largest(x, n, k, tmp);
  int64_t above = 0, equal = 0;
#pragma omp simd reduction(+ : above, equal)
  for (int64_t v = 0; v < n; ++v) {
    above += x[v] > t;
    equal += x[v] == t;
  }
#pragma omp simd
  for (int64_t v = 0; v < n; ++v) y[v] = x[v] >= t ? x[v] : -kInf;
  if (above + equal == k) return;
  // more values equal t than slots left: keep the lowest indices among them
  int64_t ties_left = k - above;
  for (int64_t v = 0; v < n; ++v) {
    if (x[v] != t) continue;
    if (ties_left > 0) --ties_left;
    else y[v] = -kInf;
  }
}

// Top-p nucleus in place: y keeps the smallest (prob desc, index asc) prefix whose
// mass reaches p (a value stays when the mass before it is below p), others -inf.
// Probabilities softmax(y) in float64. Candidates: values above a threshold whose
// mass already reaches p, lowered in steps of 4 nats; then a halving selection.
inline void keep_top_p(float* y, int64_t n, double p, float m, std::vector<std::pair<float, int64_t>>& cand) {
  double z = 0.0;
  for (int64_t v = 0; v < n; ++v) z += std::exp(static_cast<double>(y[v]) - m);
  // candidate threshold: a float32 estimate of the mass above t with a 1e-3 margin, so the
  // exact float64 selection below only ever sees a superset of the nucleus
  float t = m - 4.0f;
  for (;; t -= 4.0f) {
    float mass = 0.0f;
#pragma omp simd reduction(+ : mass)
    for (int64_t v = 0; v < n; ++v) mass += y[v] >= t ? exp_nonpos(y[v] - m) : 0.0f;
    if (mass >= (p + 1e-3) * z || t < m - 200.0f) break;
  }
  cand.clear();
  for (int64_t v = 0; v < n; ++v)
    if (y[v] >= t && y[v] > -kInf) cand.emplace_back(y[v], v);
  auto before = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  int64_t lo = 0, hi = static_cast<int64_t>(cand.size());
  double acc = 0.0;  // mass of cand[0 .. lo), all in the nucleus, < p
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    std::nth_element(cand.begin() + lo, cand.begin() + mid, cand.begin() + hi, before);
    double s = acc;
    for (int64_t i = lo; i < mid; ++i) s += std::exp(static_cast<double>(cand[i].first) - m) / z;
    if (s >= p) {
      hi = mid;
    } else {
      lo = mid;
      acc = s;
    }
  }
  std::fill(y, y + n, -kInf);
  for (int64_t i = 0; i < hi; ++i) y[cand[i].second] = cand[i].first;
}

}  // namespace sampling
}  // namespace vqfast
