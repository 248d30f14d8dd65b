// Device building blocks of the CUDA search kernels: a block of kRows rows searches a
// codebook in tiles of kCodes codes through shared memory (fp32 FMA, each thread a
// 4 x 4 register tile) and keeps a running argmin per row; never an N x K matrix.
//
// Exactness: every product is formed in fp32 from the (upcast) inputs and summed in
// dimension order with fmaf, so equal codes get bit-equal scores and ties go to the
// lowest index (vqfast::better); indices equal the float64 reference wherever the best
// and second-best scores differ by more than the fp32 rounding of the dot products.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "vqfast/argmin.h"

namespace vqfast::cuda {

constexpr int kRows = 64;      // rows per block
constexpr int kCodes = 64;     // codes per tile
constexpr int kStep = 16;      // dimensions per shared-memory stage
constexpr int kThreads = 256;  // 16 x 16 threads; thread (ty, tx) owns rows ty + 16 i, codes tx + 16 j
constexpr int kMicro = 4;      // i, j < kMicro

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

struct TileSmem {
  float x[kStep][kRows + 4];   // transposed row tile; the pad spreads the stores over banks
  float c[kStep][kCodes + 4];  // transposed code tile
};

struct RowStats {
  float x_sq[kRows];
  int finite[kRows];
};

// ||x||^2 and finiteness of the block's rows; x_at(r, i) is element i of row r (0 past
// the last row). Four threads per row. Ends with __syncthreads().
template <typename XAt>
__device__ void row_stats(const XAt& x_at, int d, RowStats& st) {
  const int r = threadIdx.x / 4, part = threadIdx.x % 4;
  float s = 0.0f;
  int ok = 1;
  for (int i = part; i < d; i += 4) {
    const float v = x_at(r, i);
    s = fmaf(v, v, s);
    ok &= finite_value(v);
  }
  s += __shfl_xor_sync(0xffffffffu, s, 1);
  s += __shfl_xor_sync(0xffffffffu, s, 2);
  ok &= __shfl_xor_sync(0xffffffffu, ok, 1);
  ok &= __shfl_xor_sync(0xffffffffu, ok, 2);
  if (part == 0) {
    st.x_sq[r] = s;
    st.finite[r] = ok;
  }
  __syncthreads();
}

// Running argmin over codes [0, k) of codebook [k, d] (fp32, contiguous) for the block's
// rows. On return best[i], best_i[i] hold row ty + 16 i's best score and code in every
// thread of that row's 16 (reduced over tx). A row whose scores are all +inf or NaN
// keeps code 0. Must be reached by all threads of the block (it synchronizes).
template <typename XAt>
__device__ void block_argmin(const XAt& x_at, const float* __restrict__ codebook, const float* __restrict__ c_sq,
                             int k, int d, bool l2, TileSmem& sm, float (&best)[kMicro], int (&best_i)[kMicro]) {
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    best[i] = INFINITY;
    best_i[i] = 0;
  }
  for (int k0 = 0; k0 < k; k0 += kCodes) {
    float acc[kMicro][kMicro] = {};
    for (int d0 = 0; d0 < d; d0 += kStep) {
      for (int e = tid; e < kRows * kStep; e += kThreads) {
        const int r = e / kStep, i = e % kStep;
        sm.x[i][r] = d0 + i < d ? x_at(r, d0 + i) : 0.0f;
      }
      for (int e = tid; e < kCodes * kStep; e += kThreads) {
        const int c = e / kStep, i = e % kStep;
        sm.c[i][c] = (k0 + c < k && d0 + i < d) ? codebook[static_cast<int64_t>(k0 + c) * d + d0 + i] : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int s = 0; s < kStep; ++s) {
        float a[kMicro], b[kMicro];
#pragma unroll
        for (int i = 0; i < kMicro; ++i) a[i] = sm.x[s][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < kMicro; ++j) b[j] = sm.c[s][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < kMicro; ++i)
#pragma unroll
          for (int j = 0; j < kMicro; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int code = k0 + tx + 16 * j;
      if (code >= k) continue;
      const float csq = l2 ? c_sq[code] : 0.0f;
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
        const float s = code_score(acc[i][j], csq, l2);
        if (better(s, code, best[i], best_i[i])) {
          best[i] = s;
          best_i[i] = code;
        }
      }
    }
  }
  // The 16 threads of a row are 16 consecutive lanes of one warp; `better` is a total
  // order on (score, index), so the butterfly gives the exact lowest-index minimum.
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) {
      const float od = __shfl_xor_sync(0xffffffffu, best[i], off);
      const int oi = __shfl_xor_sync(0xffffffffu, best_i[i], off);
      if (better(od, oi, best[i], best_i[i])) {
        best[i] = od;
        best_i[i] = oi;
      }
    }
  }
}

}  // namespace vqfast::cuda
