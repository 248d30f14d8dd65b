// Per-row building blocks of the CPU samplers (csrc/cpu/sampling.cpp): loading a row of
// logits as float32, one blocked scan (max, bad values, sum-exp, categorical proposal),
// the categorical draw, top-k thresholds and the top-p nucleus. Every loop over V is a vectorizable
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

// One pass over a row in blocks of cat::kBlock (the row is read from memory once; each
// block's second look hits L1): block max, NaN/+inf flags, the categorical proposal's
// in-block sums and, when asked, sum exp(x - block max) for the log-sum-exp.
struct RowScan {
  std::vector<float> mb, se;             // per block: max, sum exp(x - mb) (want_lse)
  std::vector<uint64_t> s, s_hat;        // per block: proposal sum, block weight (want_prop)
  float m = -kInf;                       // row max
  bool bad = false;                      // NaN or +inf present, or no finite value
  uint64_t total = 0;                    // sum of s_hat

  // log sum_v exp(x[v]) from the block sums (float64 combination).
  float lse() const {
    double z = 0.0;
    for (size_t b = 0; b < mb.size(); ++b)
      if (mb[b] > -kInf) z += static_cast<double>(se[b]) * std::exp(static_cast<double>(mb[b]) - m);
    return m + static_cast<float>(std::log(z));
  }
};

inline void scan_row(const float* x, int64_t V, bool want_prop, bool want_lse, RowScan& sc) {
  constexpr int kB = cat::kBlock;
  const int64_t nb = (V + kB - 1) / kB;
  sc.mb.resize(nb);
  sc.s.resize(want_prop ? nb : 0);
  sc.s_hat.resize(want_prop ? nb : 0);
  sc.se.resize(want_lse ? nb : 0);
  float m = -kInf;
  int bad = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kB;
    const int n = static_cast<int>(std::min<int64_t>(kB, V - b * kB));
    float bm = -kInf;
    int bbad = 0;
#pragma omp simd reduction(max : bm) reduction(| : bbad)
    for (int i = 0; i < n; ++i) {
      bm = xb[i] > bm ? xb[i] : bm;
      bbad |= static_cast<int>(!(xb[i] < kInf));  // NaN or +inf
    }
    sc.mb[b] = bm;
    bad |= bbad;
    m = bm > m ? bm : m;
    if (bbad || bm == -kInf) {
      if (want_prop) sc.s[b] = 0;
      if (want_lse) sc.se[b] = 0.0f;
      continue;
    }
    if (want_prop) {
      int32_t acc = 0;  // < 256 * (2^23 + 1) < 2^31
#pragma omp simd reduction(+ : acc)
      for (int i = 0; i < n; ++i) acc += cat::in_block_weight(xb[i], bm);
      sc.s[b] = static_cast<uint64_t>(acc);
    }
    if (want_lse) {
      float se = 0.0f;
#pragma omp simd reduction(+ : se)
      for (int i = 0; i < n; ++i) se += exp_nonpos(xb[i] - bm);
      sc.se[b] = se;
    }
  }
  sc.m = m;
  sc.bad = bad != 0 || m == -kInf;
  sc.total = 0;
  if (want_prop && !sc.bad)
    for (int64_t b = 0; b < nb; ++b) sc.total += sc.s_hat[b] = cat::block_weight(sc.s[b], m, sc.mb[b]);
}

// Lowest v with x[v] == m (m the row max, found in block order).
inline int64_t first_max(const float* x, int64_t V, const RowScan& sc) {
  int64_t b = 0;
  while (sc.mb[b] != sc.m) ++b;
  int64_t v = b * cat::kBlock;
  while (x[v] != sc.m) ++v;
  return v;
}

// Draw from softmax(x) (the scan of x with want_prop) with the words of row `row` of `stream`:
// block by s_hat, element by its in-block weight, accepted by cat::accept (vqfast/_random.py).
inline int64_t categorical(const float* x, int64_t V, const RowScan& sc, uint64_t key, uint32_t stream,
                           uint64_t row) {
  constexpr int kB = cat::kBlock;
  const int64_t nb = static_cast<int64_t>(sc.s_hat.size());
  int32_t w[kB];
  for (int trial = 0;; ++trial) {
    const philox::Words pw = philox::block_words(key, stream, (row << 6) + static_cast<uint64_t>(trial));
    const uint64_t thr = cat::floor_mul(sc.total, pw.w[0]);
    uint64_t acc = 0;
    int64_t b = 0;
    while (b < nb - 1 && acc + sc.s_hat[b] <= thr) acc += sc.s_hat[b++];
    const float* xb = x + b * kB;
    const int n = static_cast<int>(std::min<int64_t>(kB, V - b * kB));
    const float bm = sc.mb[b];
#pragma omp simd
    for (int i = 0; i < n; ++i) w[i] = cat::in_block_weight(xb[i], bm);
    const uint64_t thr2 = cat::floor_mul(sc.s[b], pw.w[1]);
    uint64_t c = 0;
    int i = 0;
    while (i < n - 1 && c + static_cast<uint64_t>(w[i]) <= thr2) c += static_cast<uint64_t>(w[i++]);
    if (trial == cat::kTrials - 1 || cat::accept(pw.w[2], xb[i], sc.m, w[i], sc.s[b], sc.s_hat[b]))
      return b * kB + i;
  }
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
