// The search's candidate pass on AMX-BF16 tiles (used when Codebook::amx, see search_rows).
#pragma once

#include <cstdint>

#include "search_core.h"

namespace vqfast::cpu {

// Rows [n] as bf16 row-major [., cb.da], zero past d (a tile row is 32 values): bf16 rows copied,
// fp32 rows rounded to nearest even (vcvtneps2bf16; it flushes denormals, inside the bound).
// out: n rounded up to 16 rows, zeroed by the caller.
void rows_to_bf16(const Codebook& cb, const Rows& rows, int64_t n, uint16_t* out);

// visit(ctx, row, dots [kNR] fp32, k0): the dots of one row with the codes k0 .. k0 + kNR - 1.
using TileVisit = void (*)(void* ctx, int64_t row, const float* dots, int64_t k0);

// Per code panel (kNR = 64 codes) and group of 16 rows of a (from rows_to_bf16), tdpbf16ps
// accumulates the 16 x 64 dots over the depth in fp32, then visits rows 0 .. n - 1 of the group.
void amx_dots(const Codebook& cb, const uint16_t* a, int64_t n, TileVisit visit, void* ctx);

}  // namespace vqfast::cpu
