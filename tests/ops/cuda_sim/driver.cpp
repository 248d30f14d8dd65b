// C entry points over the CUDA launchers for ctypes (tests/ops/test_cuda_kernels_sim.py).
#include "vqfast/cuda/launchers.h"

using vqfast::cuda::DType;

extern "C" int sim_nearest_code(const void* x, int dtype, int64_t n, int64_t d, int64_t ldx, const float* cb,
                                const float* c_sq, int64_t k, int l2, int64_t* idx, float* dist, const void* src,
                                void* q) {
  return vqfast::cuda::nearest_code(x, static_cast<DType>(dtype), n, d, ldx, cb, c_sq, k, l2 != 0, idx, dist, src, q,
                                    nullptr);
}

extern "C" int sim_dual_codebook_quantize(const void* x, int dtype, int64_t n, int64_t d, int64_t ldx,
                                          const uint8_t* visible, const int64_t* order, const float* e,
                                          const float* e_sq, int64_t k,
                                          const float* e2, const float* e2_sq, int64_t k2, int l2, const void* e_src,
                                          const void* e2_src, int64_t* idx, void* q) {
  return vqfast::cuda::dual_codebook_quantize(x, static_cast<DType>(dtype), n, d, ldx, visible, order, e, e_sq, k, e2,
                                              e2_sq, k2, l2 != 0, e_src, e2_src, idx, q, nullptr);
}

extern "C" int sim_residual_quantize(const void* x, int dtype, int64_t n, int64_t d, int64_t ldx, const float* cb,
                                     const float* c_sq, const float* src, int64_t k, int64_t depth, int shared,
                                     int l2, float* residual, int64_t* idx, void* q) {
  return vqfast::cuda::residual_quantize(x, static_cast<DType>(dtype), n, d, ldx, cb, c_sq, src, k, depth,
                                         shared != 0, l2 != 0, residual, idx, q, nullptr);
}
