// Running argmin with vqfast's tie rule, shared by every CPU and CUDA kernel.
//
// Who uses what: `better` (the tie rule) and `finite_value` are used by the CUDA
// kernels (float scores) and by the CPU search core's exact float64 re-rank and row
// checks (csrc/cpu/search_core.cpp), so both pick the same index for the same
// distances. The CPU core's candidate filter (lower bound <= best upper bound over 64
// codes at once) stays in AVX-512 intrinsics there: a per-element call of a scalar
// header function would cost the vectorized scan its speed. The score helpers below
// (code_score, score_to_dist, l2_from_dot) serve the float-only GPU argmin; the CPU
// core instead bounds each score's rounding and re-ranks in float64.
#pragma once
#include <math.h>

#include "vqfast/macros.h"

namespace vqfast {

// True when candidate (d, i) beats the current best (best_d, best_i): a smaller
// distance wins; an equal distance goes to the lower index. NaN never wins.
// T = float in the CUDA kernels, double in the CPU core's exact re-rank.
template <typename T>
VQFAST_HD bool better(T d, long long i, T best_d, long long best_i) {
  return d < best_d || (d == best_d && i < best_i);
}

// l2 distance from the GEMM expansion ||x||^2 - 2 x.c + ||c||^2, clamped at 0
// (rounding can make it slightly negative for x == c).
VQFAST_HD float l2_from_dot(float x_sq, float dot, float c_sq) {
  float d = x_sq - 2.0f * dot + c_sq;
  return d > 0.0f ? d : 0.0f;
}

// Metric ids shared with vqfast/ops/nearest_code.py (_METRIC_ID).
constexpr int kMetricL2 = 0;
constexpr int kMetricCosine = 1;

// The score a search minimizes for one code, from the dot product x.c: l2 drops the
// row constant ||x||^2 (c_sq - 2 x.c); cosine takes codes already L2-normalized (-x.c).
VQFAST_HD float code_score(float dot, float c_sq, bool l2) { return l2 ? c_sq - 2.0f * dot : -dot; }

// The best score of a row back to its distance: ||x - c||^2 (clamped at 0) for l2,
// 1 - cos(x, c) for cosine (a zero row has norm clamped to 1e-12, as F.normalize).
VQFAST_HD float score_to_dist(float best, float x_sq, bool l2) {
  if (l2) return l2_from_dot(x_sq, 0.0f, best);
  float norm = sqrtf(x_sq);
  return 1.0f + best / (norm > 1e-12f ? norm : 1e-12f);
}

// False for NaN and +-inf (written without isfinite so it means the same in host and
// device code and under any math flags). T = float or double.
template <typename T>
VQFAST_HD bool finite_value(T v) { return v == v && v - v == T(0); }

}  // namespace vqfast
