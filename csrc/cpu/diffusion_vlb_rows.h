// Row passes of the uniform VLB forward (csrc/cpu/diffusion.cpp) with one exp per logit: the
// row is read from memory once, by 256-blocks (max, then e^(x - block max) into a scratch row
// E), and the softplus / sigmoid sums over k come from E with no further exp:
//   v_k = e^(lr + y_k) = c_b E_k,  c_b = e^(lr + mb_b - lse),
//   softplus(lr + y_k) = log(1 + v_k),  sigmoid(lr + y_k) = v_k / (1 + v_k).
// The logs of 16 lanes are taken as the log of their running product (mantissas by getmant,
// exponents summed by getexp), so there is no per-element log either.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "sampling_row.h"
#include "vqfast/diffusion_math.h"
#include "vqfast/philox.h"

namespace vqfast {
namespace VQFAST_ISA {  // isa.h: compiled once per build
namespace diffusion_vlb {

constexpr int kB = 256;
constexpr int kPrefetch = 16;  // blocks ahead, into L2, as in diffusion_scan.h

struct RowExp {
  float m, s, lse;
  bool ok;  // no NaN or +inf, and at least one entry above -inf
};

#if VQFAST_AVX512
// e^d in 16 lanes for d <= 88, ~2.6e-7 relative (~1e-38 instead of 0 below -87): n = round(d log2 e)
// by the 1.5 * 2^23 trick, r = d - n ln2 (one FMA), a degree-5 minimax polynomial of e^r on
// [-ln2/2, ln2/2] (Lawson-fitted, 7.5e-8), 2^n added to the exponent bits. 7 ops on the FMA
// pipes instead of sampling::exp512_nonpos's 10 (Cephes degree 7 and a scalef): on Zen 4 those
// pipes bound this file's loops.
inline __m512 exp512_fast(__m512 d) {
  d = _mm512_max_ps(d, _mm512_set1_ps(-87.0f));  // keeps 2^n a normal exponent
  const __m512 magic = _mm512_set1_ps(12582912.0f);
  const __m512 kf = _mm512_fmadd_ps(d, _mm512_set1_ps(1.44269504f), magic);
  const __m512 n = _mm512_sub_ps(kf, magic);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147182f), d);
  __m512 p = _mm512_set1_ps(8.2976539e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1915383e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6667575e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.9998894e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.9999970e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0000001f));
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(_mm512_castps_si512(kf), 23)));
}
#endif

#if VQFAST_AVX512
// Max and NaN / +inf lanes of a full block (rows are read in order: its loads also prefetch
// ahead; prefetches never fault, also past the end of the tensor).
struct BlockLook {
  __m512 m;
  __mmask16 nf;
};

inline void look_step(const float* xb, int i, __m512& m0, __m512& m1, __mmask16& nf) {
  const __m512 inf = _mm512_set1_ps(INFINITY);
  _mm_prefetch(reinterpret_cast<const char*>(xb + kPrefetch * kB + i), _MM_HINT_T1);
  _mm_prefetch(reinterpret_cast<const char*>(xb + kPrefetch * kB + i + 16), _MM_HINT_T1);
  const __m512 a = _mm512_loadu_ps(xb + i), c = _mm512_loadu_ps(xb + i + 16);
  nf |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ) | _mm512_cmp_ps_mask(c, inf, _CMP_NLT_UQ);
  m0 = _mm512_max_ps(m0, a);
  m1 = _mm512_max_ps(m1, c);
}

inline BlockLook look(const float* xb) {
  __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
  __mmask16 nf = 0;
  for (int i = 0; i < kB; i += 32) look_step(xb, i, m0, m1, nf);
  return {_mm512_max_ps(m0, m1), nf};
}

// ec = e^(xc - bm) of a full block, returns its sum; with kLook, look(xn) of the next block in
// the same loop: a block's exps wait for the reduction of its max, and block by block the core
// stalled on it.
template <bool kLook>
inline float exp_block(const float* xc, float bm, float* ec, const float* xn, BlockLook& lk) {
  const __m512 vbm = _mm512_set1_ps(bm);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
  __mmask16 nf = 0;
#pragma GCC unroll 2
  for (int i = 0; i < kB; i += 32) {
    if (kLook) look_step(xn, i, m0, m1, nf);
    const __m512 e0 = exp512_fast(_mm512_sub_ps(_mm512_loadu_ps(xc + i), vbm));
    const __m512 e1 = exp512_fast(_mm512_sub_ps(_mm512_loadu_ps(xc + i + 16), vbm));
    _mm512_storeu_ps(ec + i, e0);
    _mm512_storeu_ps(ec + i + 16, e1);
    acc0 = _mm512_add_ps(acc0, e0);
    acc1 = _mm512_add_ps(acc1, e1);
  }
  if (kLook) lk = {_mm512_max_ps(m0, m1), nf};
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}
#endif

// The look of the first block of the row at `at`, taken by the pass over the row before it.
struct Carry {
  const float* at = nullptr;
#if VQFAST_AVX512
  BlockLook lk;
#endif
};

// mb [nb] block maxima, E [K] = e^(x - mb_b) (0 in blocks without a finite value), se [nb]
// scratch; s = sum_k e^(x_k - m) from the block sums in float64. next: x + K may be read (the
// next row, usually passed next): when K is a multiple of the block, its first block's look
// runs with this row's last exps, as in diffusion_scan.h.
inline RowExp row_exp_blocks(const float* x, int64_t K, float* E, float* mb, double* se, Carry& carry, bool next) {
  const int64_t nb = (K + kB - 1) / kB;
  float m = -INFINITY;
  bool bad = false;
#if VQFAST_AVX512
  const int64_t nfull = K / kB;
  BlockLook lk;
  if (nfull > 0) lk = carry.at == x ? carry.lk : look(x);
  carry.at = nullptr;
  const bool ahead = next && K % kB == 0;
#endif
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kB;
    float* eb = E + b * kB;
    const int n = static_cast<int>(std::min<int64_t>(kB, K - b * kB));
    float bm = -INFINITY;
    float sum = 0.0f;
#if VQFAST_AVX512
    if (b < nfull) {  // lk is block b's look
      if (lk.nf) {
        bad = true;
        break;
      }
      bm = _mm512_reduce_max_ps(lk.m);
      const bool more = b + 1 < nfull;
      if (bm > -INFINITY) {
        if (more) {
          sum = exp_block<true>(xb, bm, eb, xb + kB, lk);
        } else if (ahead) {
          sum = exp_block<true>(xb, bm, eb, xb + kB, carry.lk);
          carry.at = xb + kB;
        } else {
          sum = exp_block<false>(xb, bm, eb, nullptr, lk);
        }
      } else if (more) {
        lk = look(xb + kB);
      }
    } else {  // the last, partial block
      const __m512 ninf = _mm512_set1_ps(-INFINITY), inf = _mm512_set1_ps(INFINITY);
      __m512 vm = ninf;
      __mmask16 nf = 0;  // lanes with NaN or +inf
      for (int i = 0; i < n; i += 16) {
        const __mmask16 live = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1);
        const __m512 a = _mm512_mask_loadu_ps(ninf, live, xb + i);
        nf |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ);
        vm = _mm512_max_ps(vm, a);
      }
      if (nf) {
        bad = true;
        break;
      }
      bm = _mm512_reduce_max_ps(vm);
      if (bm > -INFINITY) {
        const __m512 vbm = _mm512_set1_ps(bm);
        __m512 acc = _mm512_setzero_ps();
        for (int i = 0; i < n; i += 16) {
          const __mmask16 live = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1);
          const __m512 e = exp512_fast(_mm512_sub_ps(_mm512_mask_loadu_ps(vbm, live, xb + i), vbm));
          _mm512_mask_storeu_ps(eb + i, live, e);
          acc = _mm512_mask_add_ps(acc, live, acc, e);
        }
        sum = _mm512_reduce_add_ps(acc);
      }
    }
#else
    for (int i = 0; i < n; ++i) {
      bad |= !(xb[i] < INFINITY);
      bm = xb[i] > bm ? xb[i] : bm;
    }
    if (bad) break;
    if (bm > -INFINITY)
      for (int i = 0; i < n; ++i) sum += eb[i] = exp_f32(xb[i] - bm);
#endif
    if (bm == -INFINITY) std::fill(eb, eb + n, 0.0f);
    mb[b] = bm;
    se[b] = sum;
    m = bm > m ? bm : m;
  }
  if (bad || m == -INFINITY) return {m, 0.0f, NAN, false};
  double s = 0.0;
  for (int64_t b = 0; b < nb; ++b)
    if (mb[b] > -INFINITY) s += se[b] * exp_f32(mb[b] - m);
  return {m, static_cast<float>(s), m + static_cast<float>(std::log(s)), true};
}

// cb [nb] = e^(lr + mb_b - lse): v_k = cb_b E_k for k in block b (~0 for a block without a finite
// value). Vectorized: a scalar exp per block was a long serial chain in kl_sums' block loop.
inline void block_scales(const float* mb, int64_t nb, float lr, float lse, float* cb) {
#if VQFAST_AVX512
  const __m512 vlr = _mm512_set1_ps(lr), vlse = _mm512_set1_ps(lse), hi = _mm512_set1_ps(88.0f);
  for (int64_t b = 0; b < nb; b += 16) {
    const __mmask16 live = static_cast<__mmask16>(nb - b >= 16 ? 0xFFFF : (1u << (nb - b)) - 1);
    const __m512 d = _mm512_add_ps(vlr, _mm512_sub_ps(_mm512_maskz_loadu_ps(live, mb + b), vlse));
    _mm512_mask_storeu_ps(cb + b, live, exp512_fast(_mm512_min_ps(d, hi)));
  }
#else
  for (int64_t b = 0; b < nb; ++b) cb[b] = exp_f32(lr + (mb[b] - lse));
#endif
}

// Over every k: d = -sum softplus(lr + y_k), sig = sum sigmoid(lr + y_k), from E, mb and se of
// row_exp_blocks and cb of block_scales.
inline void kl_sums(const float* E, const float* mb, const double* se, const float* cb_all, int64_t K, double& d,
                    double& sig) {
  const int64_t nb = (K + kB - 1) / kB;
  double logs = 0.0, ss = 0.0;
#if VQFAST_AVX512
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  __m512 expo = _mm512_setzero_ps(), prod0 = one, prod1 = one, vs0 = _mm512_setzero_ps(), vs1 = vs0;
  // sigmoid = v / f by a reciprocal and one Newton step (f >= 1): ~2^-28 relative
  const auto add_sigmoid = [&](__m512 v, __m512 f, __m512& vs) {
    __m512 r = _mm512_rcp14_ps(f);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(f, r, two));
    vs = _mm512_add_ps(vs, _mm512_mul_ps(v, r));
  };
  for (int64_t b = 0; b < nb; ++b) {
    if (mb[b] == -INFINITY) continue;  // v = 0: softplus 0, sigmoid 0
    const float cb = cb_all[b];
    if (cb < 0x1p-24f) {  // every v < 2^-24: softplus and sigmoid are v to float32 precision
      logs += cb * se[b];
      ss += cb * se[b];
      continue;
    }
    const float* eb = E + b * kB;
    const int n = static_cast<int>(std::min<int64_t>(kB, K - b * kB));
    const __m512 vcb = _mm512_set1_ps(cb);
    if (n == kB && cb < 16383.0f) {
      // each accumulator takes 8 factors f = 1 + v < 2^14 per block: the products stay below
      // 2^113, so no per-element split into mantissa and exponent
#pragma GCC unroll 2
      for (int i = 0; i < kB; i += 32) {
        const __m512 v0 = _mm512_mul_ps(vcb, _mm512_loadu_ps(eb + i));
        const __m512 v1 = _mm512_mul_ps(vcb, _mm512_loadu_ps(eb + i + 16));
        const __m512 f0 = _mm512_add_ps(one, v0), f1 = _mm512_add_ps(one, v1);
        prod0 = _mm512_mul_ps(prod0, f0);
        prod1 = _mm512_mul_ps(prod1, f1);
        add_sigmoid(v0, f0, vs0);
        add_sigmoid(v1, f1, vs1);
      }
    } else {
      for (int i = 0; i < n; i += 16) {
        const __mmask16 live = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1);
        const __m512 v = _mm512_mul_ps(vcb, _mm512_maskz_loadu_ps(live, eb + i));  // 0 in dead lanes
        const __m512 f = _mm512_add_ps(one, v);
        expo = _mm512_add_ps(expo, _mm512_getexp_ps(f));
        prod0 = _mm512_mul_ps(prod0, _mm512_getmant_ps(f, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero));
        add_sigmoid(v, f, vs0);
      }
    }
    // renormalize to mantissas in [1, 2) before the products can overflow
    expo = _mm512_add_ps(expo, _mm512_add_ps(_mm512_getexp_ps(prod0), _mm512_getexp_ps(prod1)));
    prod0 = _mm512_getmant_ps(prod0, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    prod1 = _mm512_getmant_ps(prod1, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
  }
  alignas(64) float pr[16];
  _mm512_store_ps(pr, _mm512_mul_ps(prod0, prod1));
  double pp = 1.0;  // 16 lanes in [1, 4): one log instead of 16
  for (int l = 0; l < 16; ++l) pp *= pr[l];
  logs += std::log(pp);
  logs += 0.6931471805599453 * static_cast<double>(_mm512_reduce_add_ps(expo));
  ss += _mm512_reduce_add_ps(_mm512_add_ps(vs0, vs1));
#else
  for (int64_t b = 0; b < nb; ++b) {
    if (mb[b] == -INFINITY) continue;
    const float cb = cb_all[b];
    if (cb < 0x1p-24f) {
      logs += cb * se[b];
      ss += cb * se[b];
      continue;
    }
    const int n = static_cast<int>(std::min<int64_t>(kB, K - b * kB));
    for (int i = 0; i < n; ++i) {
      const float v = cb * E[b * kB + i];
      logs += std::log1p(static_cast<double>(v));
      ss += v / (1.0f + v);
    }
  }
#endif
  d = -logs;
  sig = ss;
}

}  // namespace diffusion_vlb
}  // namespace VQFAST_ISA
}  // namespace vqfast
