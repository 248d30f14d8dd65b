// Fused backward of posterior_logprobs on the CPU (forward: csrc/cpu/diffusion.cpp): the
// gradient to log_x0 of sum_k G_k out_k, out = log q(z_{t-1} | z_t, softmax(log_x0)), one task
// per position, three passes over a row that stays in cache (O(threads * K) scratch).
//
// With y = log_softmax(x), p = e^y, the uniform posterior out_k = A_k + B_k - Z
// (diffusion_math.h) gives dout_k / dy_m = [k == m] s_m - pi_m s_m, s_m = dB_m / dy_m =
// sigmoid(lr + y_m) = ab p_m / (ab p_m + ck) (1 at t = 1), pi = e^out. So
//   g^y_m = s_m (G_m - S pi_m),  S = sum_k G_k,   g^x = g^y - p sum_m g^y_m.
// Absorbing with z_t masked: out_k = log c + y_k (k < K), out_K = log m, c + m = 1, and the
// terms of Z cancel: g^x_k = G_k - p_k sum_{k' < K} G_k'. Unmasked z_t: a constant, gradient 0.
// Like the reference backward, entries where out is -inf carry no gradient (G_k taken as 0).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

#include "diffusion_alloc.h"
#include "vqfast/diffusion_math.h"
#include "vqfast/philox.h"

namespace vqfast {
namespace {

using namespace diffusion;

// One row: x [K] (float32), go [K'] upstream gradient, lse of x -> g [K] (P, GY: [K] scratch).
template <typename T>
void logprobs_grad_row(const float* x, const float* go, int64_t K, int64_t zt, const float* c, int64_t kind,
                       float lse, float* P, float* GY, T* g) {
  if (kind == kAbsorbing) {
    if (zt < K) {
      std::fill(g, g + K, static_cast<T>(0.0f));
      return;
    }
    double gs = 0.0;
    for (int64_t k = 0; k < K; ++k) gs += x[k] > -INFINITY ? go[k] : 0.0f;
    const float gsum = static_cast<float>(gs);
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
      const float p = exp_f32(x[k] - lse);
      g[k] = static_cast<T>((x[k] > -INFINITY ? go[k] : 0.0f) - p * gsum);
    }
    return;
  }
  const float a0 = c[kA0], a1 = c[kA1], lab = c[kLogAb], lc = c[kLogC], ab = c[kAb], ck = c[kCK];
  const bool t1 = lc == -INFINITY;  // t = 1: B = y, s = 1; out = -inf exactly where x = -inf
  double ps = 0.0, gs = 0.0;
  // by blocks of 256, prefetching x and go 8 blocks ahead (the loads stalled on memory); the
  // next row follows in memory, and prefetches past the end never fault
  for (int64_t k0 = 0; k0 < K; k0 += 256) {
    const int64_t k1 = std::min<int64_t>(K, k0 + 256);
    for (int64_t q = k0; q < k0 + 256; q += 16) {
      __builtin_prefetch(x + q + 2048);
      __builtin_prefetch(go + q + 2048);
    }
    float gsum_f = 0.0f, ps_f = 0.0f;
#pragma omp simd reduction(+ : gsum_f, ps_f)
    for (int64_t k = k0; k < k1; ++k) {
      const float p = exp_f32(x[k] - lse);
      P[k] = p;
      ps_f += k == zt ? 0.0f : p;  // the mass outside z_t, summed without cancellation
      gsum_f += (t1 && !(x[k] > -INFINITY)) ? 0.0f : go[k];
    }
    ps += ps_f;
    gs += gsum_f;
  }
  // Z from the row's mass outside z_t (sum_k e^{B_k} = 1, see diffusion_math.h)
  const float b_zt = logaddexp_scalar(lab + (x[zt] - lse), lc);
  const float rest_p = static_cast<float>(ps);
  const float z = uniform_log_norm(a0, a1, b_zt, ab * rest_p + ck * static_cast<float>(K - 1));
  const float e0 = std::exp(a0 - z), e1 = std::exp(a1 - z);
  const float S = static_cast<float>(gs);
  float sy = 0.0f;
  // branch-free (0/1 blends, a floored denominator) so the loop vectorizes: den = 0 only where
  // p = 0 and ck = 0, i.e. at t = 1, where s = 1 anyway
  const float w1 = t1 ? 1.0f : 0.0f;
#pragma omp simd reduction(+ : sy)
  for (int64_t k = 0; k < K; ++k) {
    const float p = P[k];
    const float abp = ab * p, den = abp + ck;
    const float s = w1 + (1.0f - w1) * (abp / std::max(den, FLT_MIN));
    const float pi = (k == zt ? e1 : e0) * den;
    const float gk = (t1 && !(x[k] > -INFINITY)) ? 0.0f : go[k];
    const float gy = s * (gk - S * pi);
    GY[k] = gy;
    sy += gy;
  }
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) g[k] = static_cast<T>(GY[k] - P[k] * sy);
}

template <typename T>
void logprobs_grad_impl(const at::Tensor& x, const float* go, const int64_t* zt, const float* coef, int64_t L,
                        int64_t kind, const float* lse, T* grad) {
  const int64_t N = x.size(0), K = x.size(1), Ks = K + (kind == kAbsorbing);
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / K), [&](int64_t n0, int64_t n1) {
    std::vector<float> buf(std::is_same<T, float>::value ? 0 : K), P(K), GY(K);  // p and g^y of a row
    for (int64_t n = n0; n < n1; ++n) {
      const float* row;
      if constexpr (std::is_same<T, float>::value) {
        row = xp + n * K;
      } else {
        for (int64_t k = 0; k < K; ++k) buf[k] = static_cast<float>(xp[n * K + k]);
        row = buf.data();
      }
      logprobs_grad_row(row, go + n * Ks, K, zt[n], coef + (n / L) * kNumCoef, kind, lse[n], P.data(),
                        GY.data(), grad + n * K);
    }
  });
}

}  // namespace

// grad_out [N, K'] fp32, log_x0 [N, K], z_t [N], coef [B, 6], lse [N] (the forward's) -> [N, K] in log_x0's dtype.
at::Tensor diffusion_posterior_logprobs_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                    const at::Tensor& zt, const at::Tensor& coef, int64_t L,
                                                    int64_t kind, const at::Tensor& lse) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "diffusion_cpu: log_x0 [N, K] contiguous expected");
  TORCH_CHECK(kind == kUniform || kind == kAbsorbing, "diffusion_cpu: unknown transition kind");
  const int64_t N = x.size(0), K = x.size(1), Ks = K + (kind == kAbsorbing);
  TORCH_CHECK(zt.dim() == 1 && zt.size(0) == N && zt.scalar_type() == at::kLong && zt.is_contiguous(),
              "diffusion_cpu: z_t [N] int64 expected");
  TORCH_CHECK(coef.dim() == 2 && coef.size(1) == kNumCoef && coef.scalar_type() == at::kFloat &&
                  coef.is_contiguous() && L >= 1 && coef.size(0) * L == N,
              "diffusion_cpu: coef [B, 6] fp32 with B * L == N expected");
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == N && grad_out.size(1) == Ks &&
                  grad_out.scalar_type() == at::kFloat && grad_out.is_contiguous(),
              "diffusion_cpu: grad_out [N, K'] fp32 contiguous expected");
  TORCH_CHECK(lse.dim() == 1 && lse.size(0) == N && lse.scalar_type() == at::kFloat && lse.is_contiguous(),
              "diffusion_cpu: lse [N] fp32 expected");
  auto out = diffusion_alloc::empty(x.sizes(), x.options());  // huge pages, pooled
  const float* go = grad_out.data_ptr<float>();
  switch (x.scalar_type()) {
    case at::kFloat:
      logprobs_grad_impl<float>(x, go, zt.data_ptr<int64_t>(), coef.data_ptr<float>(), L, kind,
                                lse.data_ptr<float>(), out.data_ptr<float>());
      break;
    case at::kHalf:
      logprobs_grad_impl<at::Half>(x, go, zt.data_ptr<int64_t>(), coef.data_ptr<float>(), L, kind,
                                   lse.data_ptr<float>(), out.data_ptr<at::Half>());
      break;
    case at::kBFloat16:
      logprobs_grad_impl<at::BFloat16>(x, go, zt.data_ptr<int64_t>(), coef.data_ptr<float>(), L, kind,
                                       lse.data_ptr<float>(), out.data_ptr<at::BFloat16>());
      break;
    default:
      TORCH_CHECK(false, "diffusion_cpu: log_x0 must be fp32, fp16 or bf16");
  }
  return out;
}

TORCH_LIBRARY_FRAGMENT(vqfast_cpu, m) {
  m.def("diffusion_posterior_logprobs_backward(Tensor grad_out, Tensor log_x0, Tensor z_t, Tensor coef, int L, "
        "int kind, Tensor lse) -> Tensor");
}

TORCH_LIBRARY_IMPL(vqfast_cpu, CPU, m) {
  m.impl("diffusion_posterior_logprobs_backward", &diffusion_posterior_logprobs_backward_cpu);
}

}  // namespace vqfast
