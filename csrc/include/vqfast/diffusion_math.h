// Per-element and per-position math of the discrete-diffusion posterior (VQ-DDM seed
// Sec. 3.1, eqs. 16-24), shared by the CPU kernel (csrc/cpu/diffusion.cpp) and any CUDA
// kernel. Per-element functions are branch-free float32 so CPU loops vectorize.
//
// Uniform transition, per batch row (coefficients from vqfast/diffusion/_coef.py, float64
// rounded to float32), with ab = abar_{t-1}, a = alpha_t, y_k = log softmax(log_x0)_k:
//   A_k  = log Q_t[k, z_t] = a1 if k == z_t else a0,  a1 = log(a + (1-a)/K), a0 = log((1-a)/K)
//   B_k  = log q(z_{t-1}=k | x0) = logaddexp(log ab + y_k, lc),  lc = log((1-ab)/K)   (eq. 17)
//   log q(z_{t-1}=k | z_t, x0) = A_k + B_k - Z,  Z = log sum_k e^{A_k + B_k}          (eqs. 20-21)
// Because sum_k e^{B_k} = 1, Z = logaddexp(a0 + log(rest), a1 + B_{z_t}) with
// rest = sum_{k != z_t} e^{B_k} = ab (1 - p_{z_t}) + (1-ab)(K-1)/K: one pass gives Z.
#pragma once
#include <cmath>
#include <cstdint>

#include "vqfast/macros.h"
#include "vqfast/philox.h"

// Forced inlining on the host: a call left in a loop body stops GCC from vectorizing it.
#if defined(__CUDACC__)
#define VQFAST_DM VQFAST_HD
#else
#define VQFAST_DM inline __attribute__((always_inline))
#endif

namespace vqfast {
namespace diffusion {

// Transition kinds (same numbers in vqfast/diffusion/_coef.py).
constexpr int64_t kUniform = 0;
constexpr int64_t kAbsorbing = 1;

// Per-batch-row coefficient slots (float32 [B, kNumCoef]).
// uniform:   a0, a1, log ab, lc, ab, (1-ab)/K
// absorbing: log c, log m, c   with c = (abar_{t-1} - abar_t) / (1 - abar_t), m = (1 - abar_{t-1}) / (1 - abar_t)
constexpr int kA0 = 0, kA1 = 1, kLogAb = 2, kLogC = 3, kAb = 4, kCK = 5;
constexpr int kLogKeep = 0, kLogMask = 1, kKeep = 2;
constexpr int kNumCoef = 6;

// exp_f32 (Cephes expf) lives in vqfast/philox.h: the categorical sampler uses it too.

// log(1 + e) for e in [0, 1]: a 5-term series below 0.03 (relative error < 1e-8), log(1 + e)
// above (relative error < 2e-6). Division-free selects so loops vectorize.
VQFAST_DM float log1p_f32(float e) {
  const float series = e * (1.0f - e * (0.5f - e * (0.33333334f - e * (0.25f - e * 0.2f))));
  const float direct = log_f32(1.0f + e);
  // A 0/1 blend, not `?:`: GCC turns a select guarding log_f32 into a branch and stops vectorizing.
  const float w = e < 0.03f ? 1.0f : 0.0f;
  return w * series + (1.0f - w) * direct;
}

// log(e^a + e^b), exact for -inf arguments.
VQFAST_DM float logaddexp_f32(float a, float b) {
  const float hi = a > b ? a : b;
  const float lo = a > b ? b : a;
  const float d = lo == -INFINITY ? -100.0f : lo - hi;  // exp_f32(-100) = 0, also when hi = -inf
  return hi + log1p_f32(exp_f32(d));
}

// softplus(u) = log(1 + e^u) and sigmoid(u), stable for all u (u = +inf gives sigmoid 1).
VQFAST_DM void softplus_sigmoid(float u, float& sp, float& sig) {
  const float au = u < 0.0f ? -u : u;
  const float e = exp_f32(-au);
  const float pos = u > 0.0f ? u : 0.0f;
  sp = pos + log1p_f32(e);
  const float inv = 1.0f / (1.0f + e);
  sig = u > 0.0f ? inv : e * inv;
}

// sigmoid(u) by the same steps as softplus_sigmoid's, without the softplus.
VQFAST_DM float sigmoid_f32(float u) {
  const float e = exp_f32(-(u < 0.0f ? -u : u));
  const float inv = 1.0f / (1.0f + e);
  return u > 0.0f ? inv : e * inv;
}

// Scalar logaddexp for per-position values. log1p in float64: glibc's float log1pf took ~5x
// as long per call and was the largest scalar cost per row of the VLB forward at K = 1024.
VQFAST_DM float logaddexp_scalar(float a, float b) {
  const float hi = a > b ? a : b, lo = a > b ? b : a;
  return lo == -INFINITY ? hi : hi + static_cast<float>(std::log1p(static_cast<double>(std::exp(lo - hi))));
}

// Scalar log that returns -inf for 0 (per-position values, not per element).
VQFAST_DM float log_or_ninf(float v) { return v > 0.0f ? std::log(v) : -INFINITY; }

// Z of the uniform posterior (see the header comment): a0, a1, B_{z_t}, rest.
VQFAST_DM float uniform_log_norm(float a0, float a1, float b_zt, float rest) {
  const float x = a0 + log_or_ninf(rest);
  const float y = a1 + b_zt;
  return logaddexp_scalar(x, y);
}

}  // namespace diffusion
}  // namespace vqfast
