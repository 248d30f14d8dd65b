// Launchers of the CUDA kernels (csrc/cuda/*.cu): raw pointers and a stream, no torch
// types, so the kernels compile with plain nvcc and the ATen bindings
// (csrc/cuda/*_binding.cpp, GPU builds only) stay small.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace vqfast::cuda {

// Element type of x and of the tensors written in x's dtype.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// idx[n] = argmin_k score(x_n, c_k) (ties: lowest k), dist[n] its distance; rows of x
// that are not finite get idx 0 and dist NaN. x [n, d] with row stride ldx (unit
// stride along d); codebook [k, d] fp32 contiguous (L2-normalized rows for cosine);
// c_sq [k] = ||c_k||^2. When q is not null, q[n] = src[idx[n]] (src [k, d] and q [n, d]
// contiguous, both in x's dtype): the quantize gather fused into the search.
cudaError_t nearest_code(const void* x, DType dtype, int64_t n, int64_t d, int64_t ldx, const float* codebook,
                         const float* c_sq, int64_t k, bool l2, int64_t* idx, float* dist, const void* src,
                         void* q, cudaStream_t stream);

// PUT's dual codebook: visible rows (visible[n] != 0) take their nearest code of e
// [k, d], masked rows their nearest code of e2 [k2, d] with the index offset by k;
// q[n] = the chosen code, from e_src / e2_src (in x's dtype). Search layout as above.
// order [n] is a permutation of the rows, visible first: block b takes rows
// order[b * 64 : (b + 1) * 64], so at most one block mixes both kinds.
cudaError_t dual_codebook_quantize(const void* x, DType dtype, int64_t n, int64_t d, int64_t ldx,
                                   const uint8_t* visible, const int64_t* order, const float* e,
                                   const float* e_sq, int64_t k,
                                   const float* e2, const float* e2_sq, int64_t k2, bool l2, const void* e_src,
                                   const void* e2_src, int64_t* idx, void* q, cudaStream_t stream);

// RQ-VAE residual quantization over `depth` levels: r_0 = x, k_i = nearest(r_{i-1}),
// r_i = r_{i-1} - c_{k_i} (fp32). codebook / c_sq / src hold one level ([k, d], [k],
// [k, d]) when shared, else depth of them back to back; src holds the caller's codes
// in fp32. idx [n, depth]; q [n, d] (x's dtype) = sum of the codes in level order.
// residual [n, d] fp32 is scratch owned by the call.
cudaError_t residual_quantize(const void* x, DType dtype, int64_t n, int64_t d, int64_t ldx, const float* codebook,
                              const float* c_sq, const float* src, int64_t k, int64_t depth, bool shared, bool l2,
                              float* residual, int64_t* idx, void* q, cudaStream_t stream);

}  // namespace vqfast::cuda
