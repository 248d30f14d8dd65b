// Deterministic per-code row sums shared by ema_statistics (ema.cpp) and the fused
// quantize_statistics (quantize_statistics.cpp).
//
// The summation order depends only on (N, K): the rows are cut into C fixed chunks
// (stat_chunks); chunk c's rows are added in row order into its own fp32 partial
// (chunk 0's partial is `sums` itself), and the partials are added into `sums` in
// chunk order: sums = ((p0 + p1) + p2) + ... Threads take (chunk, column block) tasks;
// each element is accumulated independently, so neither the column split nor the
// vector width changes the bits: every thread count gives the same result.
// A chunk holds >= kChunkRowsPerCode * K rows, so zeroing and adding its partial
// (2 K d) costs little next to streaming its rows; C <= kMaxChunks keeps the extra
// memory at most (kMaxChunks - 1) K d floats.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace vqfast::ema {

constexpr int64_t kChunkRowsPerCode = 32;
constexpr int64_t kMaxChunks = 8;
constexpr int64_t kMinCols = 16;  // narrowest column block: one 64-byte line of fp32 sums

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

// The fixed row chunks: chunk c is rows [chunk_begin(N, C, c), chunk_begin(N, C, c + 1)).
inline int64_t stat_chunks(int64_t N, int64_t K) {
  return std::clamp<int64_t>(N / (kChunkRowsPerCode * K), 1, kMaxChunks);
}
inline int64_t chunk_begin(int64_t N, int64_t C, int64_t c) { return N * c / C; }

// Columns per block so that `tasks_per_col_block` tasks times the blocks feed every
// thread (a multiple of kMinCols; d itself when no split is needed).
inline int64_t column_block(int64_t d, int64_t tasks_per_col_block, int64_t threads) {
  int64_t n_cols = std::min((threads + tasks_per_col_block - 1) / tasks_per_col_block, (d + kMinCols - 1) / kMinCols);
  n_cols = std::max<int64_t>(n_cols, 1);
  return std::min(d, ((d + n_cols - 1) / n_cols + kMinCols - 1) / kMinCols * kMinCols);
}

// Adds columns [c0, c0 + w) of rows [r0, r1) of x [., d] (in row order) into acc [K, d]
// at row idx[r].
template <typename T>
void add_rows(const T* x, const int64_t* idx, int64_t r0, int64_t r1, int64_t d, int64_t c0, int64_t w, float* acc) {
  for (int64_t r = r0; r < r1; ++r) add_row(acc + idx[r] * d + c0, x + r * d + c0, w);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// Grouped accumulation (the streaming pass of ema_statistics): a block's rows are visited
// code by code (a stable counting sort of its idx) and each code's strip of acc stays in
// registers while its rows are added, so a [K, d] partial that misses L2 is read and
// written once per code and block rather than once per row. Each code still adds its rows
// in row order: the bits are add_rows'. 5-12% faster at N = 65536, K = 1024, d = 256.
constexpr int64_t kStrip = 256;           // fp32 columns held in 16 zmm registers
constexpr int64_t kGroupRowsPerCode = 4;  // group only where a block averages this many rows per code
constexpr int64_t kBlockBytes = 16 << 20;  // x bytes per block
constexpr int64_t kMaxBlockRows = 16384;
constexpr int64_t kPrefetchRows = 8;  // rows are visited out of order: prefetch them

inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16(const c10::Half* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
inline __m512 load16(const c10::BFloat16* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// acc[0, 16 (NV - 1) + popcount(tail)) += the same columns of x + rows[i] * d, i = 0..n-1 in order.
template <int NV, typename T>
void add_group_strip(const T* x, int64_t d, const int64_t* rows, int64_t n, __mmask16 tail, float* acc) {
  __m512 v[NV];
  for (int j = 0; j < NV; ++j) v[j] = load16(acc + 16 * j, j == NV - 1 ? tail : __mmask16(0xFFFF));
  for (int64_t i = 0; i < n; ++i) {
    const T* xr = x + rows[i] * d;
    for (int j = 0; j < NV; ++j) v[j] = _mm512_add_ps(v[j], load16(xr + 16 * j, j == NV - 1 ? tail : __mmask16(0xFFFF)));
  }
  for (int j = 0; j < NV; ++j) _mm512_mask_storeu_ps(acc + 16 * j, j == NV - 1 ? tail : __mmask16(0xFFFF), v[j]);
}

// add_group_strip<nv> for a run-time nv in [1, sizeof...(NV)].
template <typename T, int... NV>
void add_group_strip(int nv, const T* x, int64_t d, const int64_t* rows, int64_t n, __mmask16 tail, float* acc,
                     std::integer_sequence<int, NV...>) {
  ((nv == NV + 1 ? add_group_strip<NV + 1>(x, d, rows, n, tail, acc) : void()), ...);
}

template <typename T>
void add_rows_grouped(const T* x, const int64_t* idx, int64_t r0, int64_t r1, int64_t d, int64_t c0, int64_t w,
                      float* acc, int64_t K, int64_t block) {
  const int64_t row_bytes = w * static_cast<int64_t>(sizeof(T));
  std::vector<int64_t> end(K + 1), order(std::min(block, r1 - r0));
  for (int64_t b = r0; b < r1; b += block) {
    const int64_t e = std::min(r1, b + block), n = e - b;
    std::fill(end.begin(), end.end(), 0);
    for (int64_t r = b; r < e; ++r) ++end[idx[r] + 1];
    for (int64_t k = 0; k < K; ++k) end[k + 1] += end[k];
    for (int64_t r = b; r < e; ++r) order[end[idx[r]]++] = r;  // end[k] is now group k's end
    int64_t ahead = 0;  // next position of `order` to prefetch
    for (int64_t i = 0; i < n;) {
      const int64_t k = idx[order[i]], g = end[k] - i;
      for (const int64_t stop = std::min(n, end[k] + kPrefetchRows); ahead < stop; ++ahead) {
        const char* row = reinterpret_cast<const char*>(x + order[ahead] * d + c0);
        for (int64_t byte = 0; byte < row_bytes; byte += 64) _mm_prefetch(row + byte, _MM_HINT_T0);
      }
      for (int64_t s0 = c0; s0 < c0 + w; s0 += kStrip) {
        const int64_t sw = std::min(kStrip, c0 + w - s0), nv = (sw + 15) / 16;
        const __mmask16 tail = static_cast<__mmask16>((1u << (sw - 16 * (nv - 1))) - 1u);
        add_group_strip(static_cast<int>(nv), x + s0, d, order.data() + i, g, tail, acc + k * d + s0,
                        std::make_integer_sequence<int, kStrip / 16>{});
      }
      i += g;
    }
  }
}
#endif

// add_rows over a chunk's rows, grouped by code where that pays (the same bits).
template <typename T>
void add_chunk_rows(const T* x, const int64_t* idx, int64_t r0, int64_t r1, int64_t d, int64_t c0, int64_t w,
                    float* acc, int64_t K) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  const int64_t block = std::min(
      r1 - r0, std::clamp<int64_t>(kBlockBytes / std::max<int64_t>(w * static_cast<int64_t>(sizeof(T)), 1), 1,
                                   kMaxBlockRows));
  if (w > 0 && block >= kGroupRowsPerCode * K) return add_rows_grouped(x, idx, r0, r1, d, c0, w, acc, K, block);
#endif
  add_rows(x, idx, r0, r1, d, c0, w, acc);
}

// Zeroes columns [c0, c0 + w) of acc [K, d].
inline void zero_columns(float* acc, int64_t K, int64_t d, int64_t c0, int64_t w) {
  if (w == d) {
    std::fill_n(acc, K * d, 0.0f);
    return;
  }
  for (int64_t k = 0; k < K; ++k) std::fill_n(acc + k * d + c0, w, 0.0f);
}

// sums [K, d] += partials[0], partials[1], ... (n_partials of [K, d], in that order).
inline void add_partials(float* sums, const float* partials, int64_t n_partials, int64_t K, int64_t d,
                         bool parallel) {
  if (n_partials == 0) return;
  at::parallel_for(0, K, parallel ? 64 : K, [&](int64_t k0, int64_t k1) {
    for (int64_t p = 0; p < n_partials; ++p) add_row(sums + k0 * d, partials + (p * K + k0) * d, (k1 - k0) * d);
  });
}

}  // namespace vqfast::ema
