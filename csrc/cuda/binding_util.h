// Shared by the ATen bindings of the CUDA kernels (GPU builds only): argument checks,
// dtype mapping, the current stream, and error reporting.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "vqfast/argmin.h"
#include "vqfast/cuda/launchers.h"

namespace vqfast::cuda {

inline DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK(false, name, " must be fp32, fp16 or bf16, got ", t.scalar_type());
  }
}

// Rows of x with unit stride along d: the kernels take any row stride.
inline at::Tensor rows_view(const at::Tensor& x) { return x.stride(1) == 1 ? x : x.contiguous(); }

// The fp32 search codebook [K, d] (or [L, K, d]) as the kernels read it, contiguous.
inline at::Tensor search_layout(const at::Tensor& cb, const char* name) {
  TORCH_CHECK(cb.is_cuda() && cb.scalar_type() == at::kFloat, name, " must be an fp32 CUDA tensor");
  return cb.contiguous();
}

inline void check(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "vqfast_cuda.", op, ": ", cudaGetErrorString(err));
}

inline cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

}  // namespace vqfast::cuda
