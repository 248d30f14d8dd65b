// The exact nearest-code search shared by the CPU ops (nearest_code, quantize,
// dual_codebook_quantize, residual_quantize).
//
// Two passes per block of rows, never an N x K matrix:
//  1. candidate pass: a register-blocked GEMM micro-kernel (AVX-512 FMA for fp32,
//     AVX512-BF16 vdpbf16ps with fp32 accumulation for bf16; a portable loop
//     elsewhere) computes kMR x kNR tiles of dot products; each tile is turned into
//     scores (l2: |c|^2 - 2 x.c; cosine: -x.c / |c|) with a rigorous rounding bound
//     err_k(x) = a_k + |x| b_k, and every code whose lower bound score - err can
//     still beat the best upper bound score + err stays a candidate.
//  2. exact re-rank: the candidates' distances are recomputed in float64 directly
//     from the values (as the reference does), so equal codes get equal distances
//     and ties go to the lowest index. A row whose candidate list overflows (e.g.
//     many duplicate codes) is re-ranked against every code.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

#include "isa.h"  // use_avx512, cpu_has_bf16_dot

namespace vqfast::cpu {

constexpr int64_t kMR = 6;    // rows per micro-tile
constexpr int64_t kNR = 64;   // codes per micro-tile (4 AVX-512 vectors)
constexpr int64_t kL2 = 0;    // metric ids shared with vqfast/ops/nearest_code.py
constexpr int64_t kCosine = 1;

// A codebook laid out for the micro-kernels, built once per op call (O(K d)).
struct Codebook {
  int64_t K = 0, d = 0, Kp = 0, dp = 0;  // Kp: K rounded up to kNR; dp: d rounded up to even
  int64_t metric = kL2;
  bool bf16 = false;     // packed codes are bf16 and rows must be given as bf16
  bool amx = false;      // the candidate pass runs on AMX tiles (use_amx()): packed_amx, rows as bf16
                         // (fp32/fp16 rows rounded, with eb_amx as their bound), see search_rows
  double max_norm = 0;   // largest |c| of the finite codes: rows whose scores could overflow fp32
                         // (|x| + max_norm past 2^62) skip the fp32 pass and are re-ranked in full
  at::Tensor packed;     // fp32 [Kp/kNR, d, kNR] or bf16 [Kp/kNR, dp/2, kNR, 2] (VNNI pairs)
  at::Tensor raw;        // fp32 [K, d]: exact values for the re-rank and the gather
  at::Tensor bias, scale, err_a, err_b;  // fp32 [Kp]: score = bias + scale * dot; err = err_a + |x| err_b
  at::Tensor packed_amx;  // bf16 [Kp/kNR, da/2, kNR, 2] (da: d rounded up to 32, the tile depth)
  at::Tensor err_b_amx;   // fp32 [Kp]: err_b of the AMX pass (adds the rounding of fp32 values to bf16)
  int64_t da = 0;
  // Raw pointers into the tensors above: the hot loops must not pay data_ptr's checks.
  const float *p_raw = nullptr, *p_bias = nullptr, *p_scale = nullptr, *p_ea = nullptr, *p_eb = nullptr;
  const void* p_packed = nullptr;
  const void* p_packed_amx = nullptr;
  const float* p_eb_amx = nullptr;
};

// codebook [K, d] of any float dtype. bf16=true packs bf16 codes (codebook must be bf16).
Codebook prepare_codebook(const at::Tensor& codebook, int64_t metric, bool bf16);

// Rows handed to one search: x32 [., d] fp32 (exact values, row stride ldx) and, when
// cb.bf16, xbf [., ldb] bf16 holding the same values (ldb >= cb.dp, zero padding).
// Row r of the search is row index[r] of those arrays (row r when index is null):
// dual_codebook_quantize routes a block's rows to two searches without copying them.
struct Rows {
  const float* x32 = nullptr;
  int64_t ldx = 0;
  const at::BFloat16* xbf = nullptr;
  int64_t ldb = 0;
  int64_t n = 0;
  const int64_t* index = nullptr;
  const float* row32(int64_t r) const { return x32 + (index ? index[r] : r) * ldx; }
  const at::BFloat16* rowbf(int64_t r) const { return xbf + (index ? index[r] : r) * ldb; }
};

// Nearest code of each row: idx [n] (ties: lowest index), dist [n] (l2: squared
// distance, cosine: 1 - cos; float64 math rounded to fp32). Rows that are not finite
// get idx 0 and dist NaN. Single-threaded: callers parallelize over row blocks.
void search_rows(const Codebook& cb, const Rows& rows, int64_t* idx, float* dist);

// Number of rows a caller should hand to search_rows at once (cache blocking).
constexpr int64_t kBlockRows = 96;

// Rows per task so that both threads get work when N is small: at most kBlockRows,
// a multiple of kMR.
int64_t block_rows(int64_t n);

// Per-thread buffers that hold rows converted for a search.
struct RowBuffers {
  std::vector<float> x32;
  std::vector<at::BFloat16> xbf;
};

// Rows src[r0 : r0 + rn] of a contiguous [N, d] float tensor, as the search wants them:
// fp32 rows point into src when it is fp32, else are converted into buf; bf16 rows (for
// a bf16 codebook) point into src when d is even, else are copied with zero padding.
Rows load_rows(const at::Tensor& src, int64_t r0, int64_t rn, const Codebook& cb, RowBuffers& buf);


// Helpers shared by the op files (defined in nearest_code.cpp).
// Guards the kernels (the Python layer validates first and names the argument).
void check_search_args(const at::Tensor& x, const at::Tensor& codebook, int64_t metric, const char* op);
// bf16 dot products need both operands in bf16 (no value rounded) and the CPU feature.
bool use_bf16(const at::Tensor& x, const at::Tensor& codebook);
// z_q[r0 + o(r)] = codebook row idx[r] (from cb.raw) in z_q's dtype for r < rn, where
// o(r) = out_rows ? out_rows[r] : r. When sq_err is given, also sq_err[r0 + o(r)] =
// ||x_r - z_q row||^2 in float64 (x_r = rows.row32(r), z_q as stored): the commitment
// loss's per-row term, computed while both rows are in cache (taken from dist[r], the
// search's distance, when that is the same quantity: l2 and an fp32 z_q).
void gather_codes(const Codebook& cb, const int64_t* idx, int64_t rn, at::Tensor& z_q, int64_t r0,
                  const int64_t* out_rows = nullptr, const Rows* rows = nullptr, double* sq_err = nullptr,
                  const float* dist = nullptr);

}  // namespace vqfast::cpu
