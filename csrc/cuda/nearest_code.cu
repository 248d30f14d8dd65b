// nearest_code and quantize on CUDA: one block per kRows rows,
// the codebook streamed through shared memory with a running argmin
// (vqfast/cuda/block_argmin.cuh); the chosen codes gathered in the same kernel.
#include "vqfast/cuda/block_argmin.cuh"
#include "vqfast/cuda/launchers.h"

namespace vqfast::cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads)
    nearest_code_kernel(const T* __restrict__ x, int64_t n, int d, int64_t ldx, const float* __restrict__ codebook,
                        const float* __restrict__ c_sq, int k, bool l2, int64_t* __restrict__ idx,
                        float* __restrict__ dist, const T* __restrict__ src, T* __restrict__ q) {
  __shared__ TileSmem sm;
  __shared__ RowStats st;
  __shared__ int chosen[kRows];
  __shared__ float best_score[kRows];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const auto x_at = [&](int r, int i) { return row0 + r < n ? to_float(x[(row0 + r) * ldx + i]) : 0.0f; };
  row_stats(x_at, d, st);
  float best[kMicro];
  int best_i[kMicro];
  block_argmin(x_at, codebook, c_sq, k, d, l2, sm, best, best_i);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
      const int r = ty + 16 * i;
      chosen[r] = st.finite[r] ? best_i[i] : 0;
      best_score[r] = best[i];
      if (row0 + r < n) idx[row0 + r] = chosen[r];
    }
  }
  __syncthreads();
  if (dist != nullptr && threadIdx.x < kRows && row0 + threadIdx.x < n) {
    const int r = threadIdx.x;
    float v = NAN;
    if (st.finite[r] && !l2) {
      v = score_to_dist(best_score[r], st.x_sq[r], false);
    } else if (st.finite[r] && !(best_score[r] < INFINITY)) {
      v = INFINITY;  // no code could be searched (all NaN/inf), as the reference
    } else if (st.finite[r]) {
      // l2 from the chosen code itself: |x|^2 + (|c|^2 - 2 x.c) cancels for near matches.
      const float* c = codebook + static_cast<int64_t>(chosen[r]) * d;
      float s = 0.0f;
      for (int i = 0; i < d; ++i) {
        const float t = x_at(r, i) - c[i];
        s = fmaf(t, t, s);
      }
      v = s;
    }
    dist[row0 + r] = v;
  }
  if (q == nullptr) return;
  for (int e = threadIdx.x; e < kRows * d; e += kThreads) {
    const int r = e / d, i = e % d;
    if (row0 + r < n) q[(row0 + r) * d + i] = src[static_cast<int64_t>(chosen[r]) * d + i];
  }
}

template <typename T>
cudaError_t launch(const void* x, int64_t n, int64_t d, int64_t ldx, const float* codebook, const float* c_sq,
                   int64_t k, bool l2, int64_t* idx, float* dist, const void* src, void* q, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((n + kRows - 1) / kRows);
  nearest_code_kernel<T><<<blocks, kThreads, 0, stream>>>(
      static_cast<const T*>(x), n, static_cast<int>(d), ldx, codebook, c_sq, static_cast<int>(k), l2, idx, dist,
      static_cast<const T*>(src), static_cast<T*>(q));
  return cudaGetLastError();
}

}  // namespace

cudaError_t nearest_code(const void* x, DType dtype, int64_t n, int64_t d, int64_t ldx, const float* codebook,
                         const float* c_sq, int64_t k, bool l2, int64_t* idx, float* dist, const void* src,
                         void* q, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return launch<float>(x, n, d, ldx, codebook, c_sq, k, l2, idx, dist, src, q, stream);
    case DType::kFloat16:
      return launch<__half>(x, n, d, ldx, codebook, c_sq, k, l2, idx, dist, src, q, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(x, n, d, ldx, codebook, c_sq, k, l2, idx, dist, src, q, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vqfast::cuda
