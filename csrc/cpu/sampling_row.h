// Per-row building blocks of the CPU samplers (csrc/cpu/sampling.cpp): loading a row of
// logits as float32, one blocked scan (max, bad values, the exact log-softmax terms of
// vqfast/log_softmax.h, categorical proposal),
// the categorical draw (top-k / top-p filters: sampling_filter.h). Every loop over V is a vectorizable
// `omp simd` loop; the row stays in a thread-local scratch, so the logits are read
// from memory once. Include only from files compiled with -ffp-contract=off (setup.py).
#pragma once
#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "isa.h"
#include "vqfast/log_softmax.h"
#include "vqfast/philox.h"

namespace vqfast {
namespace VQFAST_ISA {  // isa.h: compiled once per build
namespace sampling {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr uint32_t kStreamToken = 1;       // vqfast/random.py STREAM_TOKEN
constexpr uint32_t kStreamConfidence = 2;  // vqfast/random.py STREAM_CONFIDENCE

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

// sum_i exp(x[i] - m) for n <= 256 values <= m (or -inf): ~1 ulp per term, for the diffusion
// kernels, whose sums need not be bit-exact: AVX-512 FMAs are fine there (the confidences'
// log-softmax and the top-p masses are exact: vqfast/log_softmax.h, below).
#if VQFAST_AVX512
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
#if VQFAST_AVX512
  const __m512 vm = _mm512_set1_ps(m);
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_add_ps(acc, exp512_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm)));
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) s += exp_f32(x[i] - m);
  return s;
}

#if VQFAST_AVX512
// The first min(r, 16) lanes.
inline __mmask16 tail_mask(int r) { return r >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << r) - 1); }

// Sum of 16 uint32 lanes mod 2^32, in vector adds: the in-block weight sums reach 2^31 (a
// 256-block tied at its max: 256 (2^23 + 1)), which _mm512_reduce_add_epi32 would finish in
// signed int (undefined on overflow).
inline uint32_t reduce_add_u32(__m512i v) {
  const __m256i a = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  __m128i b = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  b = _mm_add_epi32(b, _mm_shuffle_epi32(b, 0x4E));  // lanes + lanes two ahead
  b = _mm_add_epi32(b, _mm_shuffle_epi32(b, 0xB1));  // + the neighbour
  return static_cast<uint32_t>(_mm_cvtsi128_si32(b));
}

// lse::term of 16 lanes (x <= m or -inf), added to 8 int64 lanes: exp_f32(x - m) * 2^40 with the
// float32 operations of exp_f32 (no FMA), 2^40 folded into its power of two. The same integers:
// for d = x - m <= 0, exp_f32 is y 2^n with n >= -126; when y 2^n is normal, rounding it and then
// scaling by 2^40 equals rounding y 2^(n + 40); when it is subnormal (or d < -87, where exp_f32
// gives 0 and y 2^(n + 40) < 2^-85), both truncate to 0. The clamp at 88 never acts for d <= 0.
inline __m512i add_terms16(__m512i acc, __m512 xv, __m512 vm) {
  auto c = [](float v) { return _mm512_set1_ps(v); };
  const __m512 xc = _mm512_max_ps(_mm512_sub_ps(xv, vm), c(-87.0f));
  const __m512 fx = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(xc, c(1.44269504088896341f)), c(12582912.0f)),
                                  c(12582912.0f));
  __m512 r = _mm512_sub_ps(xc, _mm512_mul_ps(fx, c(0.693359375f)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(fx, c(-2.12194440e-4f)));
  const __m512 z = _mm512_mul_ps(r, r);
  __m512 p = c(1.9875691500e-4f);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), c(1.3981999507e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), c(8.3334519073e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), c(4.1665795894e-2f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), c(1.6666665459e-1f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), c(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, z), r), c(1.0f));
  const __m512i e = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127 + lse::kShift)), 23);
  const __m512 q = _mm512_mul_ps(y, _mm512_castsi512_ps(e));
  acc = _mm512_add_epi64(acc, _mm512_cvttps_epi64(_mm512_castps512_ps256(q)));
  return _mm512_add_epi64(acc, _mm512_cvttps_epi64(_mm512_extractf32x8_ps(q, 1)));
}

// The categorical proposal's in-block sum (cat::in_block_weight, bit for bit) and, into *terms,
// the sum of lse::term(x, m) of a block of n <= 256 values of max mb, in one look.
inline uint64_t prop_and_terms(const float* x, int n, float mb, float m, int64_t* terms) {
  const __m512 vmb = _mm512_set1_ps(mb), vm = _mm512_set1_ps(m), vc = _mm512_set1_ps(cat::kC);
  const __m512 vclamp = _mm512_set1_ps(cat::kClampIn), vninf = _mm512_set1_ps(-kInf);
  const __m512i v150 = _mm512_set1_epi32(150 << 23), one = _mm512_set1_epi32(1);
  __m512i accw = _mm512_setzero_si512(), accq = _mm512_setzero_si512();
  auto step = [&](__m512 xv) {
    const __m512i t = _mm512_cvttps_epi32(_mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(xv, vmb), vc), vclamp));
    const __m512i w = _mm512_add_epi32(_mm512_cvttps_epi32(_mm512_castsi512_ps(_mm512_add_epi32(t, v150))), one);
    accw = _mm512_add_epi32(accw, _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(xv, vninf, _CMP_GT_OQ), w));
    accq = add_terms16(accq, xv, vm);  // -inf lanes add 0
  };
  if (n == cat::kBlock) {
    for (int i = 0; i < n; i += 16) step(_mm512_loadu_ps(x + i));
  } else {
    for (int i = 0; i < n; i += 16) step(_mm512_mask_loadu_ps(vninf, tail_mask(n - i), x + i));
  }
  *terms = _mm512_reduce_add_epi64(accq);  // <= 256 * 2^40
  return reduce_add_u32(accw);  // <= 256 * (2^23 + 1) < 2^32
}
#endif

// Sum of lse::term(x[i], m) over a block of n <= 256 values <= m (or -inf).
inline int64_t terms_block(const float* x, int n, float m) {
#if VQFAST_AVX512
  const __m512 vm = _mm512_set1_ps(m);
  __m512i acc = _mm512_setzero_si512();
  for (int i = 0; i < n; i += 16)
    acc = add_terms16(acc, _mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), tail_mask(n - i), x + i), vm);
  return _mm512_reduce_add_epi64(acc);  // <= 256 * 2^40
#else
  int64_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += lse::term(x[i], m);
  return s;
#endif
}

struct RowScan {
  std::vector<float> mb;                 // per block: max
  std::vector<uint64_t> s, s_hat;        // per block: proposal sum, block weight (want_prop)
  float m = -kInf;                       // row max
  bool bad = false;                      // NaN or +inf present, or no finite value
  uint64_t total = 0;                    // sum of s_hat
  int64_t terms = 0;                     // sum of lse::term (want_lse)

  // L of vqfast/log_softmax.h: log softmax(x)_v = (x_v - m) - norm().
  float norm() const { return lse::log_norm(terms); }
};

// Two passes over the row: block maxima and bad values, then (a good row only) the proposal's
// block sums and the exact log-softmax terms against the row max, block by block.
inline void scan_row(const float* x, int64_t V, bool want_prop, bool want_lse, RowScan& sc) {
  constexpr int kB = cat::kBlock;
  const int64_t nb = (V + kB - 1) / kB;
  sc.mb.resize(nb);
  sc.s.resize(want_prop ? nb : 0);
  sc.s_hat.resize(want_prop ? nb : 0);
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
  }
  sc.m = m;
  sc.bad = bad != 0 || m == -kInf;
  sc.total = 0;
  sc.terms = 0;
  if (sc.bad) return;
  for (int64_t b = 0; b < nb && (want_prop || want_lse); ++b) {
    const float* xb = x + b * kB;
    const int n = static_cast<int>(std::min<int64_t>(kB, V - b * kB));
    const float bm = sc.mb[b];
    const bool lse_here = want_lse && bm - m > lse::kZeroBelow;  // else every term is 0
    if (bm == -kInf) {
      if (want_prop) sc.s[b] = 0;
      continue;
    }
#if VQFAST_AVX512
    if (want_prop && lse_here) {  // one look for both
      int64_t t;
      sc.s[b] = prop_and_terms(xb, n, bm, m, &t);
      sc.terms += t;
      continue;
    }
#endif
    if (want_prop) {
      uint32_t acc = 0;  // <= 256 * (2^23 + 1) < 2^32
#pragma omp simd reduction(+ : acc)
      for (int i = 0; i < n; ++i) acc += static_cast<uint32_t>(cat::in_block_weight(xb[i], bm));
      sc.s[b] = static_cast<uint64_t>(acc);
    }
    if (lse_here) sc.terms += terms_block(xb, n, m);
  }
  if (want_prop)
    for (int64_t b = 0; b < nb; ++b) sc.total += sc.s_hat[b] = cat::block_weight(sc.s[b], m, sc.mb[b]);
}

// Lowest v with x[v] == m (m the row max, found in block order; 16 values per compare).
inline int64_t first_max(const float* x, int64_t V, const RowScan& sc) {
  int64_t b = 0;
  while (sc.mb[b] != sc.m) ++b;
  int64_t v = b * cat::kBlock;
#if VQFAST_AVX512
  const __m512 vm = _mm512_set1_ps(sc.m);
  for (;; v += 16) {  // the block holds m: the search stops inside it
    const __mmask16 live = tail_mask(static_cast<int>(std::min<int64_t>(16, V - v)));
    const unsigned hit = _mm512_mask_cmp_ps_mask(live, _mm512_maskz_loadu_ps(live, x + v), vm, _CMP_EQ_OQ);
    if (hit) return v + std::countr_zero(hit);
  }
#else
  while (x[v] != sc.m) ++v;
  return v;
#endif
}

#if VQFAST_AVX512
// 16 in-block weights (0 for -inf).
inline __m512i weights16(__m512 x, __m512 vbm) {
  const __m512 y = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(x, vbm), _mm512_set1_ps(cat::kC)),
                                 _mm512_set1_ps(cat::kClampIn));
  const __m512i t = _mm512_add_epi32(_mm512_cvttps_epi32(y), _mm512_set1_epi32(150 << 23));
  const __m512i w = _mm512_add_epi32(_mm512_cvttps_epi32(_mm512_castsi512_ps(t)), _mm512_set1_epi32(1));
  return _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_GT_OQ), w);
}
#endif

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
// (block, id, accept): block by s_hat, id by its in-block weight (the block's weights 16 at a
// time, then the first id whose prefix sum passes the threshold, by groups of 16), then cat::accept.
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
  alignas(64) int32_t w[kB];
  uint64_t g[kB / 16];
  const int ng = (n + 15) / 16;
#if VQFAST_AVX512
  const __m512 vbm = _mm512_set1_ps(bm);
  for (int q = 0; q < ng; ++q) {
    const __mmask16 live = n - 16 * q >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - 16 * q)) - 1);
    const __m512i wv = _mm512_maskz_mov_epi32(live, weights16(_mm512_maskz_loadu_ps(live, xb + 16 * q), vbm));
    _mm512_store_si512(w + 16 * q, wv);
    g[q] = reduce_add_u32(wv);
  }
#else
  for (int q = 0; q < ng; ++q) {
    uint32_t s = 0;
    for (int l = 16 * q; l < 16 * q + 16; ++l) s += static_cast<uint32_t>(w[l] = l < n ? cat::in_block_weight(xb[l], bm) : 0);
    g[q] = s;
  }
#endif
  const bool cut = b == ex.block;
  if (cut) {
    const int64_t e = ex.id - b * kB;
    g[e / 16] -= static_cast<uint64_t>(w[e]);
    w[e] = 0;
  }
  const uint64_t s_b = cut ? ex.s : sc.s[b], s_hat_b = cut ? ex.s_hat : sc.s_hat[b];
  const uint64_t thr2 = cat::floor_mul(s_b, w_id);
  uint64_t c = 0;
  int q = 0;
  while (q < ng - 1 && c + g[q] <= thr2) c += g[q++];
  int i = 16 * q;
  while (i < n - 1 && c + static_cast<uint64_t>(w[i]) <= thr2) c += static_cast<uint64_t>(w[i++]);
  return {b * kB + i, cat::accept(w_accept, xb[i], sc.m, w[i], s_b, s_hat_b)};
}


// Draw from softmax(x) (the scan of x with want_prop) with the words of row `row` of `stream`
// (vqfast/random.py "Categorical draws").
inline int64_t categorical(const float* x, int64_t V, const RowScan& sc, uint64_t key, uint32_t stream,
                           uint64_t row) {
  const Excluded none;
  for (int trial = 0;; ++trial) {
    const philox::Words pw = philox::block_words(key, stream, (row << 6) + static_cast<uint64_t>(trial));
    const Trial tr = proposal_trial(x, V, sc, pw.w[0], pw.w[1], pw.w[2], none);
    if (tr.ok || trial == cat::kTrials - 1) return tr.k;
  }
}

}  // namespace sampling
}  // namespace VQFAST_ISA
}  // namespace vqfast
