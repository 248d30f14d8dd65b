// dual_codebook_quantize on CUDA (PUT Sec. 2-3): one pass over the
// rows. A block searches e only when one of its rows is visible and e2 only when one
// is masked (block-uniform decisions), then routes each row by its mask and gathers
// its code; masked indices are offset by k. Blocks take their rows through `order`
// (visible first, from the caller), so at most one block pays for both searches.
// Search: vqfast/cuda/block_argmin.cuh.
#include "vqfast/cuda/block_argmin.cuh"
#include "vqfast/cuda/launchers.h"

namespace vqfast::cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads)
    dual_codebook_kernel(const T* __restrict__ x, int64_t n, int d, int64_t ldx, const uint8_t* __restrict__ visible,
                         const int64_t* __restrict__ order, const float* __restrict__ e,
                         const float* __restrict__ e_sq, int k,
                         const float* __restrict__ e2, const float* __restrict__ e2_sq, int k2, bool l2,
                         const T* __restrict__ e_src, const T* __restrict__ e2_src, int64_t* __restrict__ idx,
                         T* __restrict__ q) {
  __shared__ TileSmem sm;
  __shared__ RowStats st;
  __shared__ int chosen[kRows];
  __shared__ int vis[kRows];
  __shared__ int64_t row_of[kRows];  // the x row that slot r of this block holds
  const int64_t slot0 = static_cast<int64_t>(blockIdx.x) * kRows;
  int mine_visible = 0, mine_masked = 0;
  if (threadIdx.x < kRows) {
    const bool in = slot0 + threadIdx.x < n;
    row_of[threadIdx.x] = in ? order[slot0 + threadIdx.x] : 0;
    vis[threadIdx.x] = in && visible[row_of[threadIdx.x]] != 0;
    mine_visible = vis[threadIdx.x];
    mine_masked = in && !vis[threadIdx.x];
  }
  const bool any_visible = __syncthreads_or(mine_visible);
  const bool any_masked = __syncthreads_or(mine_masked);
  const auto x_at = [&](int r, int i) { return slot0 + r < n ? to_float(x[row_of[r] * ldx + i]) : 0.0f; };
  row_stats(x_at, d, st);
  float best_e[kMicro], best_e2[kMicro];
  int i_e[kMicro], i_e2[kMicro];
  // k = 0 searches nothing: the block's rows of that kind do not exist.
  block_argmin(x_at, e, e_sq, any_visible ? k : 0, d, l2, sm, best_e, i_e);
  block_argmin(x_at, e2, e2_sq, any_masked ? k2 : 0, d, l2, sm, best_e2, i_e2);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
      const int r = ty + 16 * i;
      chosen[r] = st.finite[r] ? (vis[r] ? i_e[i] : i_e2[i]) : 0;
      if (slot0 + r < n) idx[row_of[r]] = vis[r] ? chosen[r] : chosen[r] + static_cast<int64_t>(k);
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < kRows * d; j += kThreads) {
    const int r = j / d, i = j % d;
    if (slot0 + r < n) q[row_of[r] * d + i] = (vis[r] ? e_src : e2_src)[static_cast<int64_t>(chosen[r]) * d + i];
  }
}

template <typename T>
cudaError_t launch(const void* x, int64_t n, int64_t d, int64_t ldx, const uint8_t* visible, const int64_t* order,
                   const float* e,
                   const float* e_sq, int64_t k, const float* e2, const float* e2_sq, int64_t k2, bool l2,
                   const void* e_src, const void* e2_src, int64_t* idx, void* q, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((n + kRows - 1) / kRows);
  dual_codebook_kernel<T><<<blocks, kThreads, 0, stream>>>(
      static_cast<const T*>(x), n, static_cast<int>(d), ldx, visible, order, e, e_sq, static_cast<int>(k), e2, e2_sq,
      static_cast<int>(k2), l2, static_cast<const T*>(e_src), static_cast<const T*>(e2_src), idx, static_cast<T*>(q));
  return cudaGetLastError();
}

}  // namespace

cudaError_t dual_codebook_quantize(const void* x, DType dtype, int64_t n, int64_t d, int64_t ldx,
                                   const uint8_t* visible, const int64_t* order, const float* e, const float* e_sq,
                                   int64_t k, const float* e2, const float* e2_sq, int64_t k2, bool l2,
                                   const void* e_src, const void* e2_src, int64_t* idx, void* q,
                                   cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return launch<float>(x, n, d, ldx, visible, order, e, e_sq, k, e2, e2_sq, k2, l2, e_src, e2_src, idx, q, stream);
    case DType::kFloat16:
      return launch<__half>(x, n, d, ldx, visible, order, e, e_sq, k, e2, e2_sq, k2, l2, e_src, e2_src, idx, q, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(x, n, d, ldx, visible, order, e, e_sq, k, e2, e2_sq, k2, l2, e_src, e2_src, idx, q,
                                   stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vqfast::cuda
