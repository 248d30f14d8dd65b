// An AVX-512 form of sampling_row.h's categorical-proposal scan for the diffusion
// sampler (csrc/cpu/diffusion.cpp). Same integers and float32 steps as scan_row /
// proposal_trial, so the same tokens; it exists because GCC 12 vectorizes the generic loops
// at 256 bits here and searches a block's prefix sums one element at a time, which left
// posterior_sample at ~1.8x the time of reading the logits (K = 16384) and ~3x (K = 1024).
// Include only from files compiled with fp-contract off.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "sampling_row.h"
#include "vqfast/philox.h"

namespace vqfast {
namespace diffusion_scan {

constexpr int kB = cat::kBlock;
// Blocks ahead to prefetch, into L2: the hardware prefetcher alone left the scan memory-stalled
// (1.3-1.5x the time of a plain max over the logits in a C++ loop). Into L1, 8 blocks ahead, the
// prefetches stalled the loop (B=8 L=256 K=16384, 1 thread: 1.6-1.75x torch.amax); into L2, 12 to
// 64 blocks ahead: 1.3x (vlb_kl forward 3.3x -> 2.7x), 16 best at 2 threads.
constexpr int kPrefetch = 16;

#if defined(__AVX512F__)
// sum of in_block_weight(x_i, bm) - 1 over 256 finite values (each weight - 1 is 0..2^23).
inline uint32_t block_weight_sum(const float* xb, float bm) {
  const __m512 vbm = _mm512_set1_ps(bm), vc = _mm512_set1_ps(cat::kC), lo = _mm512_set1_ps(cat::kClampIn);
  const __m512i e150 = _mm512_set1_epi32(150 << 23);
  __m512i a0 = _mm512_setzero_si512(), a1 = a0;
  for (int i = 0; i < kB; i += 32) {
    // (x - bm) * C without contraction, clamped, then the float with bits t + (150 << 23), truncated
    const __m512 y0 = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xb + i), vbm), vc), lo);
    const __m512 y1 = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xb + i + 16), vbm), vc), lo);
    const __m512i t0 = _mm512_add_epi32(_mm512_cvttps_epi32(y0), e150);
    const __m512i t1 = _mm512_add_epi32(_mm512_cvttps_epi32(y1), e150);
    a0 = _mm512_add_epi32(a0, _mm512_cvttps_epi32(_mm512_castsi512_ps(t0)));
    a1 = _mm512_add_epi32(a1, _mm512_cvttps_epi32(_mm512_castsi512_ps(t1)));
  }
  return static_cast<uint32_t>(_mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1)));
}

#endif

// sampling::scan_row(x, V, want_prop = true, want_lse = false, sc), same results. A full
// block whose float32 sum is finite has no NaN and no +-inf, so its weights are computed
// without per-element checks; any other block takes scan_row's per-element path.
inline void scan(const float* x, int64_t V, sampling::RowScan& sc) {
  const int64_t nb = (V + kB - 1) / kB;
  sc.mb.resize(nb);
  sc.s.resize(nb);
  sc.s_hat.resize(nb);
  sc.se.resize(0);
  float m = -INFINITY;
  int bad = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kB;
    const int n = static_cast<int>(std::min<int64_t>(kB, V - b * kB));
#if defined(__AVX512F__)
    if (n == kB) {
      __m512 m0 = _mm512_loadu_ps(xb), m1 = _mm512_loadu_ps(xb + 16), s0 = m0, s1 = m1;
      for (int i = 32; i < kB; i += 32) {
        // rows are read in order (the next row follows this one): keep memory busy while the
        // weights are computed (prefetches never fault, also past the end of the tensor)
        _mm_prefetch(reinterpret_cast<const char*>(xb + kPrefetch * kB + i - 32), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(xb + kPrefetch * kB + i - 16), _MM_HINT_T1);
        const __m512 a = _mm512_loadu_ps(xb + i), c = _mm512_loadu_ps(xb + i + 16);
        m0 = _mm512_max_ps(m0, a);
        m1 = _mm512_max_ps(m1, c);
        s0 = _mm512_add_ps(s0, a);
        s1 = _mm512_add_ps(s1, c);
      }
      _mm_prefetch(reinterpret_cast<const char*>(xb + kPrefetch * kB + kB - 32), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(xb + kPrefetch * kB + kB - 16), _MM_HINT_T1);
      if (std::isfinite(_mm512_reduce_add_ps(_mm512_add_ps(s0, s1)))) {
        const float bm = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
        sc.mb[b] = bm;
        m = bm > m ? bm : m;
        sc.s[b] = static_cast<uint64_t>(block_weight_sum(xb, bm)) + kB;
        continue;
      }
    }
#endif
    float bm = -INFINITY;
    int bbad = 0;
    for (int i = 0; i < n; ++i) {
      bm = xb[i] > bm ? xb[i] : bm;
      bbad |= static_cast<int>(!(xb[i] < INFINITY));
    }
    sc.mb[b] = bm;
    bad |= bbad;
    m = bm > m ? bm : m;
    uint32_t acc = 0;
    if (!bbad && bm > -INFINITY)
      for (int i = 0; i < n; ++i) acc += static_cast<uint32_t>(cat::in_block_weight(xb[i], bm));
    sc.s[b] = acc;
  }
  sc.m = m;
  sc.bad = bad != 0 || m == -INFINITY;
  sc.total = 0;
  if (!sc.bad)
    for (int64_t b = 0; b < nb; ++b) sc.total += sc.s_hat[b] = cat::block_weight(sc.s[b], m, sc.mb[b]);
}

}  // namespace diffusion_scan
}  // namespace vqfast
