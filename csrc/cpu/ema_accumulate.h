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
#include <vector>

#include "isa.h"

namespace vqfast::VQFAST_ISA::ema {  // isa.h: compiled once per build

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
#if VQFAST_AVX512
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

}  // namespace vqfast::VQFAST_ISA::ema
