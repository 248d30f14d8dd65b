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

// One pass over a row in blocks of cat::kBlock (the row is read from memory once; each
// block's second look hits L1): block max, NaN/+inf flags, the categorical proposal's
// in-block sums and, when asked, sum exp(x - block max) for the log-sum-exp.
// sum_i exp(x[i] - m) for n <= 256 values <= m (or -inf): ~1 ulp per term. Only for
// log-sum-exps, never for noise, so AVX-512 FMAs are fine here (the rest of the file
// avoids contraction to match the reference bit for bit).
#if defined(__AVX512F__)
// e^d in 16 lanes for d <= 0 (d = -inf and d < -100 give ~0): Cephes expf with FMAs, ~1 ulp.
inline __m512 exp512_nonpos(__m512 d) {
  d = _mm512_max_ps(d, _mm512_set1_ps(-100.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(d, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fmadd_ps(k, _mm512_set1_ps(2.12194440e-4f),
                                   _mm512_fmadd_ps(k, _mm512_set1_ps(-0.693359375f), d));  // d - k ln2
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(e, k);  // e * 2^k; 2^-145 flushes to 0
}
#endif

inline float sum_exp_block(const float* x, int n, float m) {
  int i = 0;
  float s = 0.0f;
#if defined(__AVX512F__)
  const __m512 vm = _mm512_set1_ps(m);
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_add_ps(acc, exp512_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm)));
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) s += exp_f32(x[i] - m);
  return s;
}

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
      uint32_t acc = 0;  // <= 256 * (2^23 + 1) < 2^32
#pragma omp simd reduction(+ : acc)
      for (int i = 0; i < n; ++i) acc += static_cast<uint32_t>(cat::in_block_weight(xb[i], bm));
      sc.s[b] = static_cast<uint64_t>(acc);
    }
    if (want_lse) sc.se[b] = sum_exp_block(xb, n, bm);
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

// The proposal of a row with one id's weight set to 0 (that id's block has sums s / s_hat,
// the row total is total); block < 0: the plain proposal.
struct Excluded {
  int64_t id = -1, block = -1;
  uint64_t s = 0, s_hat = 0, total = 0;
};

struct Trial {
  int64_t k;
  bool ok;
};

// One trial of the categorical proposal of x (its scan with want_prop) with the words
// (block, id, accept): block by s_hat, id by its in-block weight, then cat::accept.
inline Trial proposal_trial(const float* x, int64_t V, const RowScan& sc, uint32_t w_block, uint32_t w_id,
                            uint32_t w_accept, const Excluded& ex) {
  constexpr int kB = cat::kBlock;
  const int64_t nb = static_cast<int64_t>(sc.s_hat.size());
  const uint64_t thr = cat::floor_mul(ex.block < 0 ? sc.total : ex.total, w_block);
  uint64_t acc = 0;
  int64_t b = 0;
  for (; b < nb - 1; ++b) {
    const uint64_t sh = b == ex.block ? ex.s_hat : sc.s_hat[b];
    if (acc + sh > thr) break;
    acc += sh;
  }
  const float* xb = x + b * kB;
  const int n = static_cast<int>(std::min<int64_t>(kB, V - b * kB));
  const float bm = sc.mb[b];
  int32_t w[kB];
#pragma omp simd
  for (int i = 0; i < n; ++i) w[i] = cat::in_block_weight(xb[i], bm);
  const bool cut = b == ex.block;
  if (cut) w[ex.id - b * kB] = 0;
  const uint64_t s_b = cut ? ex.s : sc.s[b], s_hat_b = cut ? ex.s_hat : sc.s_hat[b];
  const uint64_t thr2 = cat::floor_mul(s_b, w_id);
  uint64_t c = 0;
  int i = 0;
  while (i < n - 1 && c + static_cast<uint64_t>(w[i]) <= thr2) c += static_cast<uint64_t>(w[i++]);
  return {b * kB + i, cat::accept(w_accept, xb[i], sc.m, w[i], s_b, s_hat_b)};
}

// Draw from softmax(x) (the scan of x with want_prop) with the words of row `row` of `stream`
// (vqfast/_random.py "Categorical draws").
inline int64_t categorical(const float* x, int64_t V, const RowScan& sc, uint64_t key, uint32_t stream,
                           uint64_t row) {
  const Excluded none;
  for (int trial = 0;; ++trial) {
    const philox::Words pw = philox::block_words(key, stream, (row << 6) + static_cast<uint64_t>(trial));
    const Trial tr = proposal_trial(x, V, sc, pw.w[0], pw.w[1], pw.w[2], none);
    if (tr.ok || trial == cat::kTrials - 1) return tr.k;
  }
}

// Values of x[0..n) that are >= t, in index order, into out (n + 16 slots); returns the
// count. AVX-512: compress 16 lanes at a time (no branch per element).
inline int64_t compress_ge(const float* x, int64_t n, float t, float* out, int32_t* ids = nullptr) {
  int64_t cnt = 0, v = 0;
#if defined(__AVX512F__)
  const __m512 vt = _mm512_set1_ps(t);
  __m512i iv = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  for (; v + 16 <= n; v += 16) {
    const __m512 xv = _mm512_loadu_ps(x + v);
    const __mmask16 mk = _mm512_cmp_ps_mask(xv, vt, _CMP_GE_OQ);
    // branch-free: a sparse, irregular mask would mispredict a test on every vector
    _mm512_storeu_ps(out + cnt, _mm512_maskz_compress_ps(mk, xv));
    if (ids) _mm512_storeu_si512(ids + cnt, _mm512_maskz_compress_epi32(mk, iv));
    cnt += __builtin_popcount(static_cast<unsigned>(mk));
    iv = _mm512_add_epi32(iv, step);
  }
#endif
  for (; v < n; ++v) {
    out[cnt] = x[v];
    if (ids) ids[cnt] = static_cast<int32_t>(v);
    cnt += x[v] >= t;
  }
  return cnt;
}

// float32 -> int32 with the same order (no NaN).
inline int32_t order_key(float f) {
  const int32_t b = static_cast<int32_t>(float_to_bits(f));
  return b ^ ((b >> 31) & 0x7FFFFFFF);
}

// The k-th largest of v[0..n) (1 <= k <= n, no NaN): the largest key K with
// count(key >= K) >= k, by bisection (32 vectorized counting passes over v).
inline float kth_by_bisection(const float* v, int64_t n, int64_t k) {
  int64_t lo = INT32_MIN, hi = INT32_MAX;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    const int32_t m32 = static_cast<int32_t>(mid);
    int64_t cnt = 0;
#pragma omp simd reduction(+ : cnt)
    for (int64_t i = 0; i < n; ++i) cnt += order_key(v[i]) >= m32;
    if (cnt >= k) lo = mid;
    else hi = mid - 1;
  }
  const int32_t key = static_cast<int32_t>(lo);
  return bits_to_float(static_cast<uint32_t>(key ^ ((key >> 31) & 0x7FFFFFFF)));
}

// The k-th largest value of x[0..n) (1 <= k <= n, no NaN). The k-th largest of a strided
// sample is a pivot with about 4k values above it: the exact selection runs on those.
inline float kth_largest(const float* x, int64_t n, int64_t k, std::vector<float>& tmp) {
  tmp.resize(n + 16);
  constexpr int64_t kStride = 64;
  const int64_t ns = n / kStride;
  if (ns >= 64 && 4 * k < n / 8) {
    for (int64_t j = 0; j < ns; ++j) tmp[j] = x[j * kStride + (j & 63)];
    const float pivot = kth_by_bisection(tmp.data(), ns, std::min(ns, 4 * k / kStride + 4));
    const int64_t cnt = compress_ge(x, n, pivot, tmp.data());
    if (cnt >= k) return kth_by_bisection(tmp.data(), cnt, k);
  }
  return kth_by_bisection(x, n, k);
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

// Top-p nucleus in place: y keeps the smallest (prob desc, index asc) prefix whose mass
// reaches p (a value stays when the mass before it is below p), others -inf; m = max y.
// Masses e^(y - m) in float32 (~1 ulp), sums in float64. Candidates: values above a
// threshold whose mass already reaches p (lowered in steps of 4 nats); then the nucleus
// boundary by bisection on the order-preserving keys of the candidates (32 vector passes
// over a few hundred values), ties at the boundary in index order.
inline void keep_top_p(float* y, int64_t n, double p, float m, std::vector<float>& cv, std::vector<int32_t>& ci,
                       std::vector<float>& ce) {
  double z = 0.0;
  float t = m - 2.0f;
  bool found = false;
#if defined(__AVX512F__)
  // one pass: z and the masses above m - 2, m - 4, ..., m - 16 (the nucleus usually starts there)
  constexpr int kSteps = 8;
  {
    double mass[kSteps] = {};
    const __m512 vm = _mm512_set1_ps(m);
    for (int64_t v0 = 0; v0 < n; v0 += cat::kBlock) {
      const int bn = static_cast<int>(std::min<int64_t>(cat::kBlock, n - v0));
      __m512 acc[kSteps + 1];
      for (auto& a : acc) a = _mm512_setzero_ps();
      int i = 0;
      for (; i + 16 <= bn; i += 16) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(y + v0 + i), vm);
        const __m512 e = exp512_nonpos(d);
        acc[kSteps] = _mm512_add_ps(acc[kSteps], e);
        for (int q = 0; q < kSteps; ++q)
          acc[q] = _mm512_mask_add_ps(acc[q], _mm512_cmp_ps_mask(d, _mm512_set1_ps(-2.0f * (q + 1)), _CMP_GE_OQ),
                                      acc[q], e);
      }
      for (int q = 0; q < kSteps; ++q) mass[q] += _mm512_reduce_add_ps(acc[q]);
      z += _mm512_reduce_add_ps(acc[kSteps]);
      for (; i < bn; ++i) {
        const float d = y[v0 + i] - m, e = exp_f32(d);
        z += e;
        for (int q = 0; q < kSteps; ++q) mass[q] += d >= -2.0f * (q + 1) ? e : 0.0f;
      }
    }
    for (int q = 0; q < kSteps && !found; ++q)
      if (mass[q] >= p * z * (1.0 + 1e-3)) {  // margin: float32 masses
        t = m - 2.0f * (q + 1);
        found = true;
      }
    if (!found) t = m - 2.0f * kSteps;
  }
#else
  for (int64_t v0 = 0; v0 < n; v0 += cat::kBlock)
    z += sum_exp_block(y + v0, static_cast<int>(std::min<int64_t>(cat::kBlock, n - v0)), m);
#endif
  const double goal = p * z;
  for (; !found; t -= 4.0f) {
    double mass = 0.0;
    for (int64_t v0 = 0; v0 < n; v0 += cat::kBlock) {
      const int bn = static_cast<int>(std::min<int64_t>(cat::kBlock, n - v0));
      float bm = 0.0f;
#pragma omp simd reduction(+ : bm)
      for (int i = 0; i < bn; ++i) bm += y[v0 + i] >= t ? exp_f32(y[v0 + i] - m) : 0.0f;
      mass += bm;
    }
    if (mass >= goal * (1.0 + 1e-3) || t < m - 200.0f) break;  // margin: float32 masses
  }
  cv.resize(n + 16);
  ci.resize(n + 16);
  const int64_t c = compress_ge(y, n, t, cv.data(), ci.data());
  ce.resize(c);
  std::vector<int32_t> keys(c);
  for (int64_t i = 0; i < c; ++i) {
    ce[i] = exp_f32(cv[i] - m);
    keys[i] = order_key(cv[i]);
  }
  // largest key K with mass(key >= K) >= goal: the boundary value; mass above it is < goal
  int64_t lo = order_key(-kInf), hi = order_key(m);
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    const int32_t m32 = static_cast<int32_t>(mid);
    const int32_t* kp = keys.data();
    const float* ep = ce.data();
    double mass = 0.0;
    for (int64_t i0 = 0; i0 < c; i0 += 256) {
      const int i1 = static_cast<int>(std::min<int64_t>(c - i0, 256));
      float part = 0.0f;
#pragma omp simd reduction(+ : part)
      for (int i = 0; i < i1; ++i) part += kp[i0 + i] >= m32 ? ep[i0 + i] : 0.0f;
      mass += part;
    }
    if (mass >= goal) lo = mid;
    else hi = mid - 1;
  }
  const int32_t kb = static_cast<int32_t>(lo);
  double above = 0.0;
  float eb = 0.0f;
  for (int64_t i = 0; i < c; ++i) {
    if (keys[i] > kb) above += ce[i];
    if (keys[i] == kb) eb = ce[i];
  }
  std::fill(y, y + n, -kInf);
  double before = above;  // boundary ties join in index order while the mass before them is < p
  for (int64_t i = 0; i < c; ++i) {
    if (keys[i] > kb) {
      y[ci[i]] = cv[i];
    } else if (keys[i] == kb && before < goal) {
      y[ci[i]] = cv[i];
      before += eb;
    }
  }
}

}  // namespace sampling
}  // namespace vqfast
