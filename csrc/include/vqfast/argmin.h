// Running argmin with vqfast's tie rule, shared by every CPU and CUDA kernel.
#pragma once
#include "vqfast/macros.h"

namespace vqfast {

// True when candidate (d, i) beats the current best (best_d, best_i): a smaller
// distance wins; an equal distance goes to the lower index. NaN never wins.
VQFAST_HD bool better(float d, long long i, float best_d, long long best_i) {
  return d < best_d || (d == best_d && i < best_i);
}

// l2 distance from the GEMM expansion ||x||^2 - 2 x.c + ||c||^2, clamped at 0
// (rounding can make it slightly negative for x == c).
VQFAST_HD float l2_from_dot(float x_sq, float dot, float c_sq) {
  float d = x_sq - 2.0f * dot + c_sq;
  return d > 0.0f ? d : 0.0f;
}

}  // namespace vqfast
