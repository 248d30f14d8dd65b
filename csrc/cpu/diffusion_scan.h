// An AVX-512 form of sampling_row.h's categorical-proposal scan for the diffusion
// sampler (csrc/cpu/diffusion.cpp). Same integers and float32 steps as scan_row /
// proposal_trial, so the same tokens; it exists because GCC 12 vectorizes the generic loops
// at 256 bits here and searches a block's prefix sums one element at a time, which left
// posterior_sample at ~1.8x the time of reading the logits (K = 16384) and ~3x (K = 1024).
// Include only from files compiled with -ffp-contract=off (setup.py).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "sampling_row.h"
#include "vqfast/philox.h"

namespace vqfast {
namespace VQFAST_ISA {  // isa.h: compiled once per build
namespace diffusion_scan {

constexpr int kB = cat::kBlock;
// Blocks ahead to prefetch, into L2: the hardware prefetcher alone left the scan memory-stalled
// (1.3-1.5x the time of a plain max over the logits in a C++ loop). Into L1, 8 blocks ahead, the
// prefetches stalled the loop (B=8 L=256 K=16384, 1 thread: 1.6-1.75x torch.amax); into L2, 12 to
// 64 blocks ahead: 1.3x (vlb_kl forward 3.3x -> 2.7x), 16 best at 2 threads.
constexpr int kPrefetch = 16;

#if VQFAST_AVX512
// Zen 4 runs 512-bit float adds, max and conversions on two pipes and multiplies / FMAs on two
// others (one op per cycle each); integer adds and max go to all four. The scan's loops were
// bound by the first group, so exact subtractions and sums run as FMAs with 1 (round(x * 1 + y)
// is round(x + y)) and the clamp as an integer max: 7 ops of the first group per 16 logits
// instead of 11.
inline __m512 add_on_fma_pipe(__m512 x, __m512 y, __m512 one) { return _mm512_fmadd_ps(x, one, y); }

// in_block_weight(x_i, bm) - 1 of values i .. i + 31 of a block (nbm = -bm) into two lane sums
// (each weight - 1 is 0..2^23). (x - bm) * C without contraction, truncated: t; then the float
// with bits t + (150 << 23), truncated. in_block_weight clamps (x - bm) * C at -30 * 2^23
// (weight - 1 = 0); here the bits are clamped at 0 instead, which gives the same 0 for every
// t < -23 * 2^23 (a float below 1) and also covers products below -2^31 (cvtt gives INT_MIN).
inline void weights_step(const float* xb, int i, __m512 nbm, __m512i& a0, __m512i& a1) {
  const __m512 vc = _mm512_set1_ps(cat::kC), one = _mm512_set1_ps(1.0f);
  const __m512i e150 = _mm512_set1_epi32(150 << 23), zero = _mm512_setzero_si512();
  const __m512 y0 = _mm512_mul_ps(add_on_fma_pipe(_mm512_loadu_ps(xb + i), nbm, one), vc);
  const __m512 y1 = _mm512_mul_ps(add_on_fma_pipe(_mm512_loadu_ps(xb + i + 16), nbm, one), vc);
  const __m512i t0 = _mm512_max_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(y0), e150), zero);
  const __m512i t1 = _mm512_max_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(y1), e150), zero);
  a0 = _mm512_add_epi32(a0, _mm512_cvttps_epi32(_mm512_castsi512_ps(t0)));
  a1 = _mm512_add_epi32(a1, _mm512_cvttps_epi32(_mm512_castsi512_ps(t1)));
}

// sum of in_block_weight(x_i, bm) - 1 over 256 finite values.
inline uint32_t block_weight_sum(const float* xb, float bm) {
  const __m512 nbm = _mm512_set1_ps(-bm);
  __m512i a0 = _mm512_setzero_si512(), a1 = a0;
  for (int i = 0; i < kB; i += 32) weights_step(xb, i, nbm, a0, a1);
  return sampling::reduce_add_u32(_mm512_add_epi32(a0, a1));  // < 256 * 2^23
}

#endif

#if VQFAST_AVX512
// Max and float32 sum of a full block, lane by lane: the sums are finite iff the block has no NaN
// and no +-inf (or else a sum overflowed; that block takes the per-element path too).
struct BlockLook {
  __m512 m, s;
};

inline bool finite(const BlockLook& lk) {  // s - s is NaN exactly in non-finite lanes
  return _mm512_cmp_ps_mask(_mm512_sub_ps(lk.s, lk.s), _mm512_setzero_ps(), _CMP_NEQ_UQ) == 0;
}

// Loads of xb (rows are read in order: keep memory busy ahead of them; prefetches never fault,
// also past the end of the tensor).
inline void prefetch_ahead(const float* xb, int i) {
  _mm_prefetch(reinterpret_cast<const char*>(xb + kPrefetch * kB + i), _MM_HINT_T1);
  _mm_prefetch(reinterpret_cast<const char*>(xb + kPrefetch * kB + i + 16), _MM_HINT_T1);
}

// Values i .. i + 31 of a block into its running maxima and sums (two lanes sets).
inline void look_step(const float* xb, int i, __m512& m0, __m512& m1, __m512& s0, __m512& s1) {
  const __m512 one = _mm512_set1_ps(1.0f);
  prefetch_ahead(xb, i);
  const __m512 a = _mm512_loadu_ps(xb + i), c = _mm512_loadu_ps(xb + i + 16);
  m0 = _mm512_max_ps(m0, a);
  m1 = _mm512_max_ps(m1, c);
  s0 = add_on_fma_pipe(a, s0, one);
  s1 = add_on_fma_pipe(c, s1, one);
}

inline BlockLook look(const float* xb) {
  __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0, s0 = _mm512_setzero_ps(), s1 = s0;
  for (int i = 0; i < kB; i += 32) look_step(xb, i, m0, m1, s0, s1);
  return {_mm512_max_ps(m0, m1), _mm512_add_ps(s0, s1)};
}

// block_weight_sum(xc, bm) with, in the same loop, look(xn) of the next block: a block's weights
// wait for its max, so block by block the core stalled on that reduction (the scan took ~2x its
// op count); here the next block's loads run meanwhile.
inline uint32_t weights_and_look(const float* xc, float bm, const float* xn, BlockLook& lk) {
  const __m512 nbm = _mm512_set1_ps(-bm);
  __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0, s0 = _mm512_setzero_ps(), s1 = s0;
  __m512i a0 = _mm512_setzero_si512(), a1 = a0;
  for (int i = 0; i < kB; i += 32) {
    look_step(xn, i, m0, m1, s0, s1);
    weights_step(xc, i, nbm, a0, a1);
  }
  lk = {_mm512_max_ps(m0, m1), _mm512_add_ps(s0, s1)};
  return sampling::reduce_add_u32(_mm512_add_epi32(a0, a1));  // < 256 * 2^23
}
#endif

// The look of the first block of the row at `at`, taken by the scan of the row before it.
struct Carry {
  const float* at = nullptr;
#if VQFAST_AVX512
  BlockLook lk;
#endif
};

// sampling::scan_row(x, V, want_prop = true, want_lse = false, sc), same results. A full
// block without NaN and +-inf has its weights computed without per-element checks; any other
// block takes scan_row's per-element path. next: x + V may be read (the next row, usually
// scanned next): when V is a multiple of the block, its first block's look runs with this
// row's last weights (short rows otherwise waited for that look at every row start).
inline void scan(const float* x, int64_t V, sampling::RowScan& sc, Carry& carry, bool next) {
  const int64_t nb = (V + kB - 1) / kB;
  sc.mb.resize(nb);
  sc.s.resize(nb);
  sc.s_hat.resize(nb);
  float m = -INFINITY;
  int bad = 0;
#if VQFAST_AVX512
  const int64_t nfull = V / kB;
  BlockLook lk;
  if (nfull > 0) lk = carry.at == x ? carry.lk : look(x);
  carry.at = nullptr;
  const bool ahead = next && V % kB == 0;
#endif
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kB;
    const int n = static_cast<int>(std::min<int64_t>(kB, V - b * kB));
#if VQFAST_AVX512
    if (b < nfull) {  // lk is block b's look
      const bool more = b + 1 < nfull;
      if (finite(lk)) {
        const float bm = _mm512_reduce_max_ps(lk.m);
        sc.mb[b] = bm;
        m = bm > m ? bm : m;
        uint32_t w;
        if (more) {
          w = weights_and_look(xb, bm, xb + kB, lk);
        } else if (ahead) {
          w = weights_and_look(xb, bm, xb + kB, carry.lk);
          carry.at = xb + kB;
        } else {
          w = block_weight_sum(xb, bm);
        }
        sc.s[b] = static_cast<uint64_t>(w) + kB;
        continue;
      }
      if (more) lk = look(xb + kB);
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
}  // namespace VQFAST_ISA
}  // namespace vqfast
