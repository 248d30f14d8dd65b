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
namespace diffusion_vlb {

constexpr int kB = 256;
constexpr int kPrefetch = 8;  // blocks ahead, as in diffusion_scan.h

struct RowExp {
  float m, s, lse;
  bool ok;  // no NaN or +inf, and at least one entry above -inf
};

// mb [nb] block maxima, E [K] = e^(x - mb_b) (0 in blocks without a finite value), se [nb]
// scratch; s = sum_k e^(x_k - m) from the block sums in float64.
inline RowExp row_exp_blocks(const float* x, int64_t K, float* E, float* mb, double* se) {
  const int64_t nb = (K + kB - 1) / kB;
  float m = -INFINITY;
  bool bad = false;
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kB;
    float* eb = E + b * kB;
    const int n = static_cast<int>(std::min<int64_t>(kB, K - b * kB));
    float bm = -INFINITY;
    float sum = 0.0f;
#if defined(__AVX512F__)
    const __m512 ninf = _mm512_set1_ps(-INFINITY), inf = _mm512_set1_ps(INFINITY);
    __m512 vm0 = ninf, vm1 = ninf;
    __mmask16 nf = 0;  // lanes with NaN or +inf
    int i = 0;
    for (; i + 32 <= n; i += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(xb + kPrefetch * kB + i), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(xb + kPrefetch * kB + i + 16), _MM_HINT_T0);
      const __m512 a = _mm512_loadu_ps(xb + i), c = _mm512_loadu_ps(xb + i + 16);
      nf |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ) | _mm512_cmp_ps_mask(c, inf, _CMP_NLT_UQ);
      vm0 = _mm512_max_ps(vm0, a);
      vm1 = _mm512_max_ps(vm1, c);
    }
    for (; i < n; i += 16) {
      const __mmask16 live = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1);
      const __m512 a = _mm512_mask_loadu_ps(ninf, live, xb + i);
      nf |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ);
      vm0 = _mm512_max_ps(vm0, a);
    }
    bm = _mm512_reduce_max_ps(_mm512_max_ps(vm0, vm1));
    if (nf) {
      bad = true;
      break;
    }
    if (bm > -INFINITY) {
      const __m512 vbm = _mm512_set1_ps(bm);
      __m512 acc = _mm512_setzero_ps();
      for (i = 0; i < n; i += 16) {
        const __mmask16 live = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1);
        const __m512 e = sampling::exp512_nonpos(_mm512_sub_ps(_mm512_mask_loadu_ps(vbm, live, xb + i), vbm));
        _mm512_mask_storeu_ps(eb + i, live, e);
        acc = _mm512_mask_add_ps(acc, live, acc, e);
      }
      sum = _mm512_reduce_add_ps(acc);
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

// c_b = e^(lr + mb_b - lse): v_k = c_b E_k for k in block b (0 for a block without a finite value).
inline float block_scale(float lr, float mb, float lse) { return exp_f32(lr + (mb - lse)); }

// Over every k: d = -sum softplus(lr + y_k), sig = sum sigmoid(lr + y_k), from E and mb of
// row_exp_blocks (lse the row's log-sum-exp, lr finite).
inline void kl_sums(const float* E, const float* mb, int64_t K, float lr, float lse, double& d, double& sig) {
  const int64_t nb = (K + kB - 1) / kB;
  double logs = 0.0, ss = 0.0;
#if defined(__AVX512F__)
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  __m512 expo = _mm512_setzero_ps(), prod = one, vs = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    if (mb[b] == -INFINITY) continue;  // v = 0: softplus 0, sigmoid 0
    const float* eb = E + b * kB;
    const int n = static_cast<int>(std::min<int64_t>(kB, K - b * kB));
    const __m512 cb = _mm512_set1_ps(block_scale(lr, mb[b], lse));
    for (int i = 0; i < n; i += 16) {
      const __mmask16 live = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1);
      const __m512 v = _mm512_mul_ps(cb, _mm512_maskz_loadu_ps(live, eb + i));  // 0 in dead lanes
      const __m512 f = _mm512_add_ps(one, v);
      expo = _mm512_add_ps(expo, _mm512_getexp_ps(f));
      prod = _mm512_mul_ps(prod, _mm512_getmant_ps(f, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero));
      __m512 r = _mm512_rcp14_ps(f);  // f >= 1; one Newton step: ~2^-28 relative
      r = _mm512_mul_ps(r, _mm512_fnmadd_ps(f, r, two));
      vs = _mm512_add_ps(vs, _mm512_mul_ps(v, r));
    }
    // 16 mantissas in [1, 2) per block: renormalize before the product can overflow
    expo = _mm512_add_ps(expo, _mm512_getexp_ps(prod));
    prod = _mm512_getmant_ps(prod, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
  }
  alignas(64) float pr[16];
  _mm512_store_ps(pr, prod);
  double pp = 1.0;  // 16 mantissas in [1, 2): one log instead of 16
  for (int l = 0; l < 16; ++l) pp *= pr[l];
  logs += std::log(pp);
  logs += 0.6931471805599453 * static_cast<double>(_mm512_reduce_add_ps(expo));
  ss = _mm512_reduce_add_ps(vs);
#else
  for (int64_t b = 0; b < nb; ++b) {
    if (mb[b] == -INFINITY) continue;
    const float cb = block_scale(lr, mb[b], lse);
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
}  // namespace vqfast
