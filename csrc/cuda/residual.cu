// residual_quantize on CUDA (RQ-VAE): one kernel runs all depth
// levels for its block of rows: r_0 = x, k_i = nearest(r_{i-1}) (block_argmin.cuh),
// r_i = r_{i-1} - c_{k_i} in fp32. The residual lives in a scratch row buffer that only
// this block touches (it stays in L1/L2 between levels); z_q is the sum of the chosen
// codes added in fp32 in level order, as the reference does.
#include "vqfast/cuda/block_argmin.cuh"
#include "vqfast/cuda/launchers.h"

namespace vqfast::cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads)
    residual_kernel(const T* __restrict__ x, int64_t n, int d, int64_t ldx, const float* __restrict__ codebook,
                    const float* __restrict__ c_sq, const float* __restrict__ src, int k, int depth, bool shared,
                    bool l2, float* __restrict__ residual, int64_t* __restrict__ idx, T* __restrict__ q) {
  __shared__ TileSmem sm;
  __shared__ RowStats st;
  __shared__ int chosen[kRows];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  float* r_rows = residual + row0 * d;
  for (int j = threadIdx.x; j < kRows * d; j += kThreads) {
    const int r = j / d, i = j % d;
    if (row0 + r < n) r_rows[j] = to_float(x[(row0 + r) * ldx + i]);
  }
  __syncthreads();
  const auto r_at = [&](int r, int i) { return row0 + r < n ? r_rows[r * d + i] : 0.0f; };
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t level_codes = shared ? 0 : static_cast<int64_t>(k) * d, level_sq = shared ? 0 : k;
  for (int level = 0; level < depth; ++level) {
    const float* cb = codebook + level * level_codes;
    const float* codes = src + level * level_codes;
    row_stats(r_at, d, st);
    float best[kMicro];
    int best_i[kMicro];
    block_argmin(r_at, cb, c_sq + level * level_sq, k, d, l2, sm, best, best_i);
    if (tx == 0) {
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
        const int r = ty + 16 * i;
        chosen[r] = st.finite[r] ? best_i[i] : 0;
        if (row0 + r < n) idx[(row0 + r) * depth + level] = chosen[r];
      }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < kRows * d; j += kThreads) {
      const int r = j / d, i = j % d;
      if (row0 + r < n) r_rows[j] -= codes[static_cast<int64_t>(chosen[r]) * d + i];
    }
    __syncthreads();
  }
  for (int j = threadIdx.x; j < kRows * d; j += kThreads) {
    const int r = j / d, i = j % d;
    if (row0 + r >= n) continue;
    float total = 0.0f;
    for (int level = 0; level < depth; ++level)
      total += src[level * level_codes + idx[(row0 + r) * depth + level] * d + i];
    q[(row0 + r) * d + i] = from_float<T>(total);
  }
}

template <typename T>
cudaError_t launch(const void* x, int64_t n, int64_t d, int64_t ldx, const float* codebook, const float* c_sq,
                   const float* src, int64_t k, int64_t depth, bool shared, bool l2, float* residual, int64_t* idx,
                   void* q, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((n + kRows - 1) / kRows);
  residual_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(x), n, static_cast<int>(d), ldx, codebook,
                                                      c_sq, src, static_cast<int>(k), static_cast<int>(depth), shared,
                                                      l2, residual, idx, static_cast<T*>(q));
  return cudaGetLastError();
}

}  // namespace

cudaError_t residual_quantize(const void* x, DType dtype, int64_t n, int64_t d, int64_t ldx, const float* codebook,
                              const float* c_sq, const float* src, int64_t k, int64_t depth, bool shared, bool l2,
                              float* residual, int64_t* idx, void* q, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return launch<float>(x, n, d, ldx, codebook, c_sq, src, k, depth, shared, l2, residual, idx, q, stream);
    case DType::kFloat16:
      return launch<__half>(x, n, d, ldx, codebook, c_sq, src, k, depth, shared, l2, residual, idx, q, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(x, n, d, ldx, codebook, c_sq, src, k, depth, shared, l2, residual, idx, q, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vqfast::cuda
