// The search's candidate pass on AMX-BF16 tiles: see search_amx.h.
#include "search_amx.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace vqfast::cpu {

__attribute__((target("avx512f,avx512bw,avx512bf16"))) void rows_to_bf16(const Codebook& cb, const Rows& rows,
                                                                          int64_t n, uint16_t* out) {
  const int64_t d = cb.d, da = cb.da;
  for (int64_t r = 0; r < n; ++r) {
    uint16_t* dst = out + r * da;
    if (cb.bf16) {
      std::memcpy(dst, rows.rowbf(r), d * sizeof(uint16_t));
      continue;
    }
    const float* x = rows.row32(r);
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 m = d - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (d - i)) - 1u);
      const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
      _mm256_mask_storeu_epi16(dst + i, m, (__m256i)v);
    }
  }
}

namespace {

// tmm0-3: the dots of 16 rows with 4 x 16 codes, tmm4: the rows' 32-deep slice, tmm5: a code
// slice; every tile 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

}  // namespace

__attribute__((target("amx-tile,amx-bf16,avx512f"))) void amx_dots(const Codebook& cb, const uint16_t* a, int64_t n,
                                                                   TileVisit visit, void* ctx) {
  TileConfig cfg;
  for (int t = 0; t < 6; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  _tile_loadconfig(&cfg);
  alignas(64) float dots[16 * kNR];
  const int64_t steps = cb.da / 32, groups = (n + 15) / 16, panels = cb.Kp / kNR;
  const int64_t a_stride = cb.da * 2, b_stride = kNR * 4;
  for (int64_t p = 0; p < panels; ++p) {
    const char* panel = static_cast<const char*>(cb.p_packed_amx) + p * (cb.da / 2) * kNR * 4;
    for (int64_t g = 0; g < groups; ++g) {
      const char* rows16 = reinterpret_cast<const char*>(a + g * 16 * cb.da);
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t s = 0; s < steps; ++s) {
        const char* slice = panel + s * 16 * b_stride;
        _tile_loadd(4, rows16 + s * 64, a_stride);
        _tile_loadd(5, slice, b_stride);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(5, slice + 64, b_stride);
        _tile_dpbf16ps(1, 4, 5);
        _tile_loadd(5, slice + 128, b_stride);
        _tile_dpbf16ps(2, 4, 5);
        _tile_loadd(5, slice + 192, b_stride);
        _tile_dpbf16ps(3, 4, 5);
      }
      _tile_stored(0, dots, b_stride);
      _tile_stored(1, dots + 16, b_stride);
      _tile_stored(2, dots + 32, b_stride);
      _tile_stored(3, dots + 48, b_stride);
      const int64_t r0 = g * 16, rn = std::min<int64_t>(16, n - r0);
      for (int64_t i = 0; i < rn; ++i) visit(ctx, r0 + i, dots + i * kNR, p * kNR);
    }
  }
  _tile_release();
}

}  // namespace vqfast::cpu
