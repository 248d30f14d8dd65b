// Discrete-diffusion posterior on the CPU (VQ-DDM Sec. 3.1,
// eqs. 16-24): log-probs, the mixture sample and the VLB KL with its backward, one task
// per position (at::parallel_for), math in vqfast/diffusion_math.h. Each position reads
// its K logits from memory once; the later passes over the row hit the cache. Extra
// memory is O(threads * K) scratch plus O(positions) outputs: no [B, L, K] temporaries.
// Compiled with -ffp-contract=off (setup.py): the sampler's float32 steps match the reference
// bit for bit. Built twice, portable and AVX-512, one picked at run time (isa.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "diffusion_alloc.h"
#include "isa.h"
#include "vqfast/diffusion_math.h"
#include "vqfast/log_softmax.h"
#include "vqfast/philox.h"

VQFAST_ISA_TARGET_BEGIN
#include "diffusion_scan.h"
#include "diffusion_vlb_rows.h"
#include "sampling_row.h"

namespace vqfast {
namespace VQFAST_ISA {
namespace {

using namespace diffusion;

// The row loops are flattened: in a translation unit this large GCC stops inlining plain
// `inline` helpers (log_f32 became a PLT call), and a call in a loop body blocks vectorizing.
#define VQFAST_ROW_LOOP __attribute__((flatten))

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// One row as float32: the input itself, or a converted copy in buf.
template <typename T>
VQFAST_ROW_LOOP const float* as_float(const T* x, int64_t K, float* buf) {
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) buf[k] = static_cast<float>(x[k]);
  return buf;
}
template <>
const float* as_float<float>(const float* x, int64_t, float*) { return x; }

struct RowLse {
  float m, s, lse;
  bool ok;  // no NaN or +inf, and at least one entry above -inf
};

VQFAST_ROW_LOOP RowLse row_lse(const float* x, int64_t K) {
  float m = -INFINITY;
  int bad = 0;
#pragma omp simd reduction(max : m) reduction(| : bad)
  for (int64_t k = 0; k < K; ++k) {
    const float v = x[k];
    m = v > m ? v : m;
    bad |= !(v < INFINITY);  // NaN or +inf
  }
  if (bad || m == -INFINITY) return {m, 0.0f, kNaN, false};
  double s = 0.0;
  for (int64_t k0 = 0; k0 < K; k0 += 256)
    s += sampling::sum_exp_block(x + k0, static_cast<int>(std::min<int64_t>(256, K - k0)), m);
  return {m, static_cast<float>(s), m + static_cast<float>(std::log(s)), true};
}

// Per-row constants of the uniform posterior with x0 = softmax(x) (diffusion_math.h).
struct UniformRow {
  float a0, a1, lab, lc, ab, ck, lse, z;
  float b_zt, rest_p;  // B_{z_t}; 1 - p_{z_t}
};

UniformRow uniform_row(const float* c, const float* x, int64_t K, int64_t zt, const RowLse& r) {
  UniformRow u{c[kA0], c[kA1], c[kLogAb], c[kLogC], c[kAb], c[kCK], r.lse, 0.0f, 0.0f, 0.0f};
  u.b_zt = logaddexp_scalar(u.lab + (x[zt] - r.lse), u.lc);
  u.rest_p = std::max(r.s - exp_f32(x[zt] - r.m), 0.0f) / r.s;  // no cancellation in p
  u.z = uniform_log_norm(u.a0, u.a1, u.b_zt, u.ab * u.rest_p + u.ck * static_cast<float>(K - 1));
  return u;
}

// Writes log q(z_{t-1} | z_t, x0) of one row into o [K'] (K' = K, or K + 1 absorbing).
VQFAST_ROW_LOOP void posterior_row(const float* x, int64_t K, int64_t zt, const float* c, int64_t kind, const RowLse& r,
                   float* o) {
  if (kind == kUniform) {
    const UniformRow u = uniform_row(c, x, K, zt, r);
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
      const float b = logaddexp_f32(u.lab + (x[k] - u.lse), u.lc);
      o[k] = ((k == zt ? u.a1 : u.a0) + b) - u.z;
    }
    return;
  }
  if (zt < K) {  // absorbing, unmasked: kept with certainty
    std::fill(o, o + K + 1, -INFINITY);
    o[zt] = 0.0f;
    return;
  }
  const float lkeep = c[kLogKeep], lse = r.lse;
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) o[k] = lkeep + (x[k] - lse);
  o[K] = c[kLogMask];
}

int64_t grain(int64_t K) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)); }

template <typename T>
void logprobs_impl(const at::Tensor& x, const int64_t* zt, const float* coef, int64_t L, int64_t kind,
                   float* out, float* lse) {
  const int64_t N = x.size(0), K = x.size(1), Ks = K + (kind == kAbsorbing);
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, N, grain(K), [&](int64_t n0, int64_t n1) {
    std::vector<float> buf(std::is_same<T, float>::value ? 0 : K);
    for (int64_t n = n0; n < n1; ++n) {
      const float* row = as_float(xp + n * K, K, buf.data());
      const RowLse r = row_lse(row, K);
      lse[n] = r.lse;
      float* o = out + n * Ks;
      if (!r.ok) {
        std::fill(o, o + Ks, kNaN);
        continue;
      }
      posterior_row(row, K, zt[n], coef + (n / L) * kNumCoef, kind, r, o);
    }
  });
}

// z_{t-1} of every position by the mixture sampler of vqfast/reference/diffusion.py
// posterior_sample: one blocked scan per row (the categorical proposal), then ~1.1 trials of
// a few Philox words each; no per-element noise or log. scoef [B, 4] = sample_coefficients.
template <typename T>
void sample_impl(const at::Tensor& x, const int64_t* zt, const float* scoef, int64_t L, int64_t kind,
                 uint64_t key, uint32_t stream, int64_t* out) {
  const int64_t N = x.size(0), K = x.size(1);
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, N, grain(K), [&](int64_t n0, int64_t n1) {
    std::vector<float> buf(std::is_same<T, float>::value ? 0 : K);
    sampling::RowScan sc;
    diffusion_scan::Carry carry;
    const sampling::Excluded none;
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t j = zt[n];
      if (kind == kAbsorbing && j < K) {  // unmasked tokens stay; no noise is used
        out[n] = j;
        continue;
      }
      const float* row = as_float(xp + n * K, K, buf.data());
      diffusion_scan::scan(row, K, sc, carry, std::is_same<T, float>::value && n + 1 < n1);
      if (sc.bad) {
        out[n] = -1;  // the caller reports the row
        continue;
      }
      const float* c = scoef + (n / L) * 4;
      const int64_t jz = std::min(j, K - 1), bz = jz / cat::kBlock;
      const int32_t w_zt = kind == kUniform ? cat::in_block_weight(row[jz], sc.mb[bz]) : 0;
      sampling::Excluded ex;
      ex.id = jz;
      ex.block = kind == kUniform ? bz : -1;  // absorbing: the "rest" part is the whole softmax
      ex.s = sc.s[bz] - static_cast<uint64_t>(w_zt);
      ex.s_hat = cat::block_weight(ex.s, sc.m, sc.mb[bz]);
      ex.total = sc.total - sc.s_hat[bz] + ex.s_hat;
      const float s_bz = static_cast<float>(std::max<uint64_t>(sc.s[bz], 1));
      const float spike = c[0] * ((static_cast<float>(sc.s_hat[bz]) * static_cast<float>(w_zt)) / s_bz);
      const float rest = c[1] * static_cast<float>(ex.total);
      const float unif = c[2] * static_cast<float>(sc.total);
      const uint64_t base = static_cast<uint64_t>(n) << 8;
      for (int trial = 0;; ++trial) {
        const philox::Words a = philox::block_words(key, stream, base + 3 * trial);
        const float u = uniform_from_word(a.w[0]) * ((spike + rest) + unif);
        sampling::Trial tr;
        if (u < spike) {
          tr = {jz, cat::accept(a.w[3], row[jz], sc.m, w_zt, sc.s[bz], sc.s_hat[bz])};
        } else if (u < spike + rest) {
          tr = sampling::proposal_trial(row, K, sc, a.w[1], a.w[2], a.w[3], ex);
        } else {
          int64_t k = K;  // absorbing: the mask
          if (kind == kUniform) {
            const philox::Words b = philox::block_words(key, stream, base + 3 * trial + 1);
            const int64_t other = static_cast<int64_t>((static_cast<uint64_t>(b.w[1]) * (K - 1)) >> 32);
            k = uniform_from_word(b.w[0]) < c[3] ? jz : other + (other >= jz);
          }
          const philox::Words f = philox::block_words(key, stream, base + 3 * trial + 2);
          tr = {k, sampling::proposal_trial(row, K, sc, f.w[0], f.w[1], f.w[2], none).ok};
        }
        if (tr.ok || trial == cat::kTrials - 1) {
          out[n] = tr.k;
          break;
        }
      }
    }
  });
}

// Per-row constants of the uniform VLB (true x0 = i one-hot, prediction softmax(x)).
struct UniformKl {
  UniformRow p;
  float zq, q_o, q_i, q_j, bq_i, b_i, b_j, lr, ea0, ea1;
};

// The true posterior's constants depend only on the batch row and on whether x0 == z_t.
struct TrueQ {
  float bq_i, zq, q_o, q_i, q_j, ea0, ea1;  // ea0 / ea1 = e^a0 / e^a1
};

TrueQ true_q(const float* c, int64_t K, bool same) {
  const float a0 = c[kA0], a1 = c[kA1], lc = c[kLogC];
  TrueQ q;
  q.bq_i = logaddexp_scalar(c[kLogAb], lc);  // log(ab + (1-ab)/K)
  const float bq_j = same ? q.bq_i : lc;
  const float restq = c[kCK] * static_cast<float>(K - 1) + (same ? 0.0f : c[kAb]);
  q.zq = uniform_log_norm(a0, a1, bq_j, restq);
  q.q_o = std::exp(a0 + lc - q.zq);
  q.q_i = std::exp((same ? a1 : a0) + q.bq_i - q.zq);
  q.q_j = same ? 0.0f : std::exp(a1 + lc - q.zq);
  q.ea0 = std::exp(a0);
  q.ea1 = std::exp(a1);
  return q;
}

// TrueQ of the two cases for the batch row of the current position, recomputed when it changes.
struct TrueQCache {
  int64_t b = -1;
  TrueQ q[2];
  const TrueQ& get(const float* c, int64_t K, int64_t b_now, bool same) {
    if (b_now != b) {
      q[0] = true_q(c, K, false);
      q[1] = true_q(c, K, true);
      b = b_now;
    }
    return q[same];
  }
};

UniformKl uniform_kl_row(const float* c, const float* x, int64_t K, int64_t i, int64_t j, const RowLse& r,
                         const TrueQ& tq) {
  UniformKl u;
  u.p = uniform_row(c, x, K, j, r);
  u.zq = tq.zq;
  u.q_o = tq.q_o;
  u.q_i = tq.q_i;
  u.q_j = tq.q_j;
  u.bq_i = tq.bq_i;
  u.ea0 = tq.ea0;
  u.ea1 = tq.ea1;
  u.b_i = logaddexp_scalar(u.p.lab + (x[i] - r.lse), u.p.lc);
  u.b_j = i == j ? u.b_i : u.p.b_zt;
  u.lr = u.p.lab - u.p.lc;  // log(ab K / (1 - ab)); +inf at t = 1
  return u;
}

// sigmoid(lr + y) = d B_k / d y_k (1 at t = 1, where B_k = y_k).
inline float dprev(float lr, float y) { return lr == INFINITY ? 1.0f : sigmoid_f32(lr + y); }

template <typename T>
void vlb_fwd_impl(const at::Tensor& x, const int64_t* zt, const int64_t* x0, const float* coef, int64_t L,
                  int64_t kind, float* kl, float* stats) {
  const int64_t N = x.size(0), K = x.size(1);
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, N, grain(K), [&](int64_t n0, int64_t n1) {
    std::vector<float> buf(std::is_same<T, float>::value ? 0 : K), E(kind == kUniform ? K : 0);
    std::vector<float> mb(kind == kUniform ? K / 256 + 1 : 0);
    std::vector<double> se(mb.size());
    std::vector<float> cb(mb.size());
    TrueQCache tqc;
    diffusion_vlb::Carry carry;
    for (int64_t n = n0; n < n1; ++n) {
      const float* c = coef + (n / L) * kNumCoef;
      float* st = stats + 3 * n;
      const int64_t i = x0[n], j = zt[n];
      if (kind == kAbsorbing && j < K) {
        kl[n] = 0.0f;
        st[0] = st[1] = st[2] = 0.0f;
        continue;
      }
      const float* row = as_float(xp + n * K, K, buf.data());
      RowLse r;
      if (kind == kUniform) {  // one exp per logit: the sums below reuse E
        const diffusion_vlb::RowExp e = diffusion_vlb::row_exp_blocks(row, K, E.data(), mb.data(), se.data(), carry,
                                                                      std::is_same<T, float>::value && n + 1 < n1);
        r = {e.m, e.s, e.lse, e.ok};
      } else {
        r = row_lse(row, K);
      }
      st[0] = r.lse;
      if (!r.ok) {
        kl[n] = st[1] = st[2] = kNaN;
        continue;
      }
      if (kind == kAbsorbing) {  // KL = -c log p(x0): both posteriors share the mask mass
        kl[n] = -c[kKeep] * (row[i] - r.lse);
        st[1] = st[2] = 0.0f;
        continue;
      }
      const UniformKl u = uniform_kl_row(c, row, K, i, j, r, tqc.get(c, K, n / L, i == j));
      // Sum over k not in {x0, z_t} of (lc - B_k) = -softplus(lr + y_k), and of sigmoid(lr + y_k).
      float d = 0.0f, sig_o = 0.0f;
      if (u.q_o > 0.0f) {
        for (const int64_t o : {i, j}) {  // x0 and z_t are not "other" states: v = 0 adds nothing
          se[o / 256] -= E[o];
          E[o] = 0.0f;
        }
        double ds, ss;
        diffusion_vlb::block_scales(mb.data(), (K + 255) / 256, u.lr, r.lse, cb.data());
        diffusion_vlb::kl_sums(E.data(), mb.data(), se.data(), cb.data(), K, ds, ss);
        d = static_cast<float>(ds);
        sig_o = static_cast<float>(ss);
      }
      float v = u.q_i * (u.bq_i - u.b_i) + (u.p.z - u.zq);
      if (u.q_o > 0.0f) v += u.q_o * d;
      if (u.q_j > 0.0f) v += u.q_j * (u.p.lc - u.b_j);
      kl[n] = v;
      // SG = sum_k dKL/dy_k, needed by the backward's softmax projection.
      const float p_j = std::exp(row[j] - r.lse);
      float sg = u.p.ab * std::exp(-u.p.z) * (u.ea0 * u.p.rest_p + u.ea1 * p_j);
      sg -= u.q_i * dprev(u.lr, row[i] - r.lse);
      if (u.q_j > 0.0f) sg -= u.q_j * dprev(u.lr, row[j] - r.lse);
      if (u.q_o > 0.0f) sg -= u.q_o * sig_o;
      st[1] = u.p.z;
      st[2] = sg;
    }
  });
}

// g_k = ck (p_k - [k == i]): the gradient of -c log p(x0 = i) times the upstream gradient.
template <typename T>
VQFAST_ROW_LOOP void absorbing_grad_row(const float* row, int64_t K, int64_t i, float lse, float ck, T* g) {
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) g[k] = static_cast<T>(ck * (exp_f32(row[k] - lse) - (k == i ? 1.0f : 0.0f)));
}

// g_k = go (dKL/dy_k - p_k SG), dKL/dy_k = e^{A_k - Z} ab p_k - q_k sigmoid(lr + y_k) (e0/e1 = ab e^{a0/a1 - Z}).
template <typename T>
VQFAST_ROW_LOOP void uniform_grad_row(const float* row, int64_t K, int64_t i, int64_t j, float lse, float lr, float ab,
                                      float ck, float e0, float e1, float q_o, float q_i, float q_j, float sg, float go,
                                      T* g) {
  const bool t1 = lr == INFINITY;  // t = 1: B_k = y_k, sigmoid = 1
  int64_t k0 = 0;
#if VQFAST_AVX512
  if constexpr (std::is_same<T, float>::value) {
    // every k as an "other" state (q_o, e0), with the lanes of x0 and z_t replaced by their
    // scalar values; sigmoid(lr + y) = ab p / (ab p + ck) (e^lr = ab / ck)
    float special[2];
    for (int q = 0; q < 2; ++q) {
      const int64_t k = q == 0 ? i : j;
      const float y = row[k] - lse;
      const float p = exp_f32(y);
      float sp, sig;
      softplus_sigmoid(lr + y, sp, sig);
      sig = t1 ? 1.0f : sig;
      const float qk = k == i ? q_i : q_j;
      const float qs = qk > 0.0f ? qk * sig : 0.0f;
      special[q] = go * (((k == j ? e1 : e0) * p - qs) - p * sg);
    }
    const int64_t ib = i & ~int64_t{15}, jb = j & ~int64_t{15};
    const __m512 vlse = _mm512_set1_ps(lse), vab = _mm512_set1_ps(ab), vck = _mm512_set1_ps(ck), one = _mm512_set1_ps(1.0f);
    const __m512 ve0 = _mm512_set1_ps(e0), vsg = _mm512_set1_ps(sg), vgo = _mm512_set1_ps(go);
    const __m512 vq = _mm512_set1_ps(q_o > 0.0f ? q_o : 0.0f);
    // streaming stores (the caller fences): the gradient is not read back here, and a
    // cache-missing plain store would first read its line from memory
    float* gf = reinterpret_cast<float*>(g);
    const bool stream = (reinterpret_cast<uintptr_t>(gf) & 63) == 0;
    for (; k0 + 16 <= K; k0 += 16) {
      _mm_prefetch(reinterpret_cast<const char*>(row + k0 + 2048), _MM_HINT_T0);  // 8 KB ahead (next row too)
      const __m512 y = _mm512_sub_ps(_mm512_loadu_ps(row + k0), vlse);
      const __m512 p = sampling::exp512_nonpos(y);
      __m512 sig = one;
      if (!t1) {
        // ab p / (ab p + ck) by a reciprocal and one Newton step (~2^-28 relative; a division
        // limited this loop): the denominator is >= ck, a normal float for t > 1
        const __m512 abp = _mm512_mul_ps(vab, p);
        const __m512 den = _mm512_max_ps(_mm512_add_ps(abp, vck), _mm512_set1_ps(FLT_MIN));
        __m512 r = _mm512_rcp14_ps(den);
        r = _mm512_mul_ps(r, _mm512_fnmadd_ps(den, r, _mm512_set1_ps(2.0f)));
        sig = _mm512_mul_ps(abp, r);
      }
      __m512 gk = _mm512_mul_ps(vgo, _mm512_sub_ps(_mm512_sub_ps(_mm512_mul_ps(ve0, p), _mm512_mul_ps(vq, sig)),
                                                   _mm512_mul_ps(p, vsg)));
      if (k0 == ib) gk = _mm512_mask_mov_ps(gk, static_cast<__mmask16>(1u << (i - ib)), _mm512_set1_ps(special[0]));
      if (k0 == jb) gk = _mm512_mask_mov_ps(gk, static_cast<__mmask16>(1u << (j - jb)), _mm512_set1_ps(special[1]));
      if (stream) _mm512_stream_ps(gf + k0, gk);
      else _mm512_storeu_ps(gf + k0, gk);
    }
  }
#endif
#pragma omp simd
  for (int64_t k = k0; k < K; ++k) {
    const float y = row[k] - lse;
    const float p = exp_f32(y);
    float sp, sig;
    softplus_sigmoid(lr + y, sp, sig);
    sig = t1 ? 1.0f : sig;
    const float q = k == i ? q_i : (k == j ? q_j : q_o);
    const float qs = q > 0.0f ? q * sig : 0.0f;
    g[k] = static_cast<T>(go * (((k == j ? e1 : e0) * p - qs) - p * sg));
  }
}

template <typename T>
void vlb_bwd_impl(const at::Tensor& x, const int64_t* zt, const int64_t* x0, const float* coef, int64_t L,
                  int64_t kind, const float* stats, const float* gout, T* grad) {
  const int64_t N = x.size(0), K = x.size(1);
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, N, grain(K), [&](int64_t n0, int64_t n1) {
    std::vector<float> buf(std::is_same<T, float>::value ? 0 : K);
    TrueQCache tqc;
    for (int64_t n = n0; n < n1; ++n) {
      const float* c = coef + (n / L) * kNumCoef;
      const float* st = stats + 3 * n;
      const int64_t i = x0[n], j = zt[n];
      T* g = grad + n * K;
      const float go = gout[n];
      if ((kind == kAbsorbing && j < K) || go == 0.0f) {
        std::fill(g, g + K, static_cast<T>(0.0f));
        continue;
      }
      const float* row = as_float(xp + n * K, K, buf.data());
      const float lse = st[0];
      if (kind == kAbsorbing) {  // d(-c y_i)/dx = c (p - onehot_i)
        absorbing_grad_row(row, K, i, lse, go * c[kKeep], g);
        continue;
      }
      RowLse r{lse, 1.0f, lse, true};  // m = lse, s = 1: the same row constants as the forward
      const UniformKl u = uniform_kl_row(c, row, K, i, j, r, tqc.get(c, K, n / L, i == j));
      // dKL/dy_k = e^{A_k - Z} ab p_k - q_k sigmoid(lr + y_k); dKL/dx = dKL/dy - p * SG.
      const float e0 = u.p.ab * std::exp(u.p.a0 - u.p.z), e1 = u.p.ab * std::exp(u.p.a1 - u.p.z);
      const float sg = st[2], lr = u.lr, q_o = u.q_o, q_i = u.q_i, q_j = u.q_j;
      uniform_grad_row(row, K, i, j, lse, lr, c[kAb], c[kCK], e0, e1, q_o, q_i, q_j, sg, go, g);
    }
    _mm_sfence();  // uniform_grad_row's streaming stores are visible before the op returns
  });
}

void check_common(const at::Tensor& x, const at::Tensor& zt, const at::Tensor& coef, int64_t L, int64_t kind) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "diffusion_cpu: log_x0 [N, K] contiguous expected");
  TORCH_CHECK(zt.dim() == 1 && zt.size(0) == x.size(0) && zt.scalar_type() == at::kLong && zt.is_contiguous(),
              "diffusion_cpu: z_t [N] int64 expected");
  TORCH_CHECK(coef.dim() == 2 && coef.size(1) == kNumCoef && coef.scalar_type() == at::kFloat &&
                  coef.is_contiguous() && L >= 1 && coef.size(0) * L == x.size(0),
              "diffusion_cpu: coef [B, 6] fp32 with B * L == N expected");
  TORCH_CHECK(kind == kUniform || kind == kAbsorbing, "diffusion_cpu: unknown transition kind");
}

#define VQFAST_DIFFUSION_DISPATCH(x, ...)                                        \
  switch (x.scalar_type()) {                                                     \
    case at::kFloat: { using scalar_t = float; __VA_ARGS__(); break; }           \
    case at::kHalf: { using scalar_t = at::Half; __VA_ARGS__(); break; }         \
    case at::kBFloat16: { using scalar_t = at::BFloat16; __VA_ARGS__(); break; } \
    default: TORCH_CHECK(false, "diffusion_cpu: log_x0 must be fp32, fp16 or bf16"); \
  }

}  // namespace

// log_x0 [N, K], z_t [N] int64, coef [B, 6] fp32 (N = B * L) -> (log-probs [N, K'] fp32, lse [N] fp32).
std::tuple<at::Tensor, at::Tensor> diffusion_posterior_logprobs_cpu(const at::Tensor& x, const at::Tensor& zt,
                                                                   const at::Tensor& coef, int64_t L,
                                                                   int64_t kind) {
  check_common(x, zt, coef, L, kind);
  const int64_t N = x.size(0), Ks = x.size(1) + (kind == kAbsorbing);
  auto out = at::empty({N, Ks}, x.options().dtype(at::kFloat));
  auto lse = at::empty({N}, x.options().dtype(at::kFloat));
  VQFAST_DIFFUSION_DISPATCH(x, [&] {
    logprobs_impl<scalar_t>(x, zt.data_ptr<int64_t>(), coef.data_ptr<float>(), L, kind, out.data_ptr<float>(),
                            lse.data_ptr<float>());
  });
  return {out, lse};
}

// scoef [B, 4] fp32 (vqfast/reference/diffusion.py sample_coefficients)
// -> z_{t-1} [N] int64 (-1 where a row of log_x0 is not finite).
at::Tensor diffusion_posterior_sample_cpu(const at::Tensor& x, const at::Tensor& zt, const at::Tensor& coef,
                                          int64_t L, int64_t kind, int64_t key, int64_t stream) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) >= 1, "diffusion_cpu: log_x0 [N, K] contiguous expected");
  TORCH_CHECK(zt.dim() == 1 && zt.size(0) == x.size(0) && zt.scalar_type() == at::kLong && zt.is_contiguous(),
              "diffusion_cpu: z_t [N] int64 expected");
  TORCH_CHECK(coef.dim() == 2 && coef.size(1) == 4 && coef.scalar_type() == at::kFloat && coef.is_contiguous() &&
                  L >= 1 && coef.size(0) * L == x.size(0),
              "diffusion_cpu: sample coefficients [B, 4] fp32 with B * L == N expected");
  TORCH_CHECK(kind == kUniform || kind == kAbsorbing, "diffusion_cpu: unknown transition kind");
  auto out = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  VQFAST_DIFFUSION_DISPATCH(x, [&] {
    sample_impl<scalar_t>(x, zt.data_ptr<int64_t>(), coef.data_ptr<float>(), L, kind, static_cast<uint64_t>(key),
                          static_cast<uint32_t>(stream), out.data_ptr<int64_t>());
  });
  return out;
}

// -> (kl [N] fp32, stats [N, 3] fp32 = (lse, Z, SG) for the backward).
std::tuple<at::Tensor, at::Tensor> diffusion_vlb_kl_cpu(const at::Tensor& x, const at::Tensor& zt,
                                                       const at::Tensor& x0, const at::Tensor& coef, int64_t L,
                                                       int64_t kind) {
  check_common(x, zt, coef, L, kind);
  TORCH_CHECK(x0.sizes() == zt.sizes() && x0.scalar_type() == at::kLong && x0.is_contiguous(),
              "diffusion_cpu: x0 [N] int64 expected");
  auto kl = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  auto stats = at::empty({x.size(0), 3}, x.options().dtype(at::kFloat));
  VQFAST_DIFFUSION_DISPATCH(x, [&] {
    vlb_fwd_impl<scalar_t>(x, zt.data_ptr<int64_t>(), x0.data_ptr<int64_t>(), coef.data_ptr<float>(), L, kind,
                           kl.data_ptr<float>(), stats.data_ptr<float>());
  });
  return {kl, stats};
}

// grad [N] fp32 -> d loss / d log_x0 [N, K] in log_x0's dtype.
at::Tensor diffusion_vlb_kl_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& zt,
                                         const at::Tensor& x0, const at::Tensor& coef, int64_t L, int64_t kind,
                                         const at::Tensor& stats) {
  check_common(x, zt, coef, L, kind);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == x.size(0) && grad.scalar_type() == at::kFloat &&
                  grad.is_contiguous() && stats.scalar_type() == at::kFloat && stats.is_contiguous() &&
                  stats.numel() == 3 * x.size(0),
              "diffusion_cpu: grad [N] fp32 and stats [N, 3] fp32 expected");
  auto out = diffusion_alloc::empty(x.sizes(), x.options());
  VQFAST_DIFFUSION_DISPATCH(x, [&] {
    vlb_bwd_impl<scalar_t>(x, zt.data_ptr<int64_t>(), x0.data_ptr<int64_t>(), coef.data_ptr<float>(), L, kind,
                           stats.data_ptr<float>(), grad.data_ptr<float>(), out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace VQFAST_ISA
}  // namespace vqfast
VQFAST_ISA_TARGET_END

#if !VQFAST_AVX512
VQFAST_AVX512_DECLARE(diffusion_posterior_logprobs_cpu)
VQFAST_AVX512_DECLARE(diffusion_posterior_sample_cpu)
VQFAST_AVX512_DECLARE(diffusion_vlb_kl_cpu)
VQFAST_AVX512_DECLARE(diffusion_vlb_kl_backward_cpu)

TORCH_LIBRARY_FRAGMENT(vqfast_cpu, m) {
  m.def("diffusion_posterior_logprobs(Tensor log_x0, Tensor z_t, Tensor coef, int L, int kind) -> (Tensor, Tensor)");
  m.def("diffusion_posterior_sample(Tensor log_x0, Tensor z_t, Tensor coef, int L, int kind, int key, int stream) -> Tensor");
  m.def("diffusion_vlb_kl(Tensor log_x0, Tensor z_t, Tensor x0, Tensor coef, int L, int kind) -> (Tensor, Tensor)");
  m.def("diffusion_vlb_kl_backward(Tensor grad, Tensor log_x0, Tensor z_t, Tensor x0, Tensor coef, int L, int kind, Tensor stats) -> Tensor");
}

TORCH_LIBRARY_IMPL(vqfast_cpu, CPU, m) {
  m.impl("diffusion_posterior_logprobs", VQFAST_ISA_PICK(diffusion_posterior_logprobs_cpu));
  m.impl("diffusion_posterior_sample", VQFAST_ISA_PICK(diffusion_posterior_sample_cpu));
  m.impl("diffusion_vlb_kl", VQFAST_ISA_PICK(diffusion_vlb_kl_cpu));
  m.impl("diffusion_vlb_kl_backward", VQFAST_ISA_PICK(diffusion_vlb_kl_backward_cpu));
}
#endif
