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

// e^x for x <= 88 (Cephes expf: x = n ln2 + r, degree-5 polynomial in r); 0 below -87.3
// and for -inf. Max error ~2 ulp.
VQFAST_HD float exp_f32(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float fx = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * z + r + 1.0f;
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(fx) + 127) << 23);
  return x < -87.0f ? 0.0f : y * scale;
}

// log(1 + e) for e in [0, 1]: log(u) * e / (u - 1) with u = 1 + e corrects the rounding of u.
VQFAST_HD float log1p_f32(float e) {
  const float u = 1.0f + e;
  const float d = u - 1.0f;
  return d == 0.0f ? e : log_f32(u) * (e / d);
}

// log(e^a + e^b), exact for -inf arguments.
VQFAST_HD float logaddexp_f32(float a, float b) {
  const float hi = a > b ? a : b;
  const float lo = a > b ? b : a;
  return lo == -INFINITY ? hi : hi + log1p_f32(exp_f32(lo - hi));
}

// softplus(u) = log(1 + e^u) and sigmoid(u), stable for all u (u = +inf gives sigmoid 1).
VQFAST_HD void softplus_sigmoid(float u, float& sp, float& sig) {
  const float au = u < 0.0f ? -u : u;
  const float e = exp_f32(-au);
  const float pos = u > 0.0f ? u : 0.0f;
  sp = pos + log1p_f32(e);
  sig = u > 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

// Scalar log that returns -inf for 0 (per-position values, not per element).
VQFAST_HD float log_or_ninf(float v) { return v > 0.0f ? std::log(v) : -INFINITY; }

// Z of the uniform posterior (see the header comment): a0, a1, B_{z_t}, rest.
VQFAST_HD float uniform_log_norm(float a0, float a1, float b_zt, float rest) {
  const float x = a0 + log_or_ninf(rest);
  const float y = a1 + b_zt;
  const float hi = x > y ? x : y, lo = x > y ? y : x;
  return lo == -INFINITY ? hi : hi + std::log1p(std::exp(lo - hi));
}

// Scalar logaddexp for per-position values.
VQFAST_HD float logaddexp_scalar(float a, float b) {
  const float hi = a > b ? a : b, lo = a > b ? b : a;
  return lo == -INFINITY ? hi : hi + std::log1p(std::exp(lo - hi));
}

}  // namespace diffusion
}  // namespace vqfast
