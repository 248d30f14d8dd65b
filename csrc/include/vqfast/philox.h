// vqfast's counter-based noise, shared by every CPU and CUDA kernel and mirrored bit for
// bit by vqfast/reference/random.py (PyTorch) and triton_kernels/random.py (Triton).
//
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11):
//   key   = (k0, k1)     = the 64-bit call key (low word, high word), from vqfast/random.py
//   ctr   = (c0, c1, c2, c3) = (block lo32, block hi32, stream, 0), block = element >> 2
//   word  = philox(ctr, key)[element & 3]
// so element i of stream s is a pure function of (key, s, i): every backend, thread
// and tile order draws the same numbers.
//
// Noise from a 32-bit word w (float32 throughout, IEEE round-to-nearest, no FMA):
//   uniform(w) = (2 * (w >> 9) + 1) * 2^-24      in [2^-24, 1 - 2^-24], exact
//   gumbel(w)  = -log(-log(uniform(w)))           log = vqfast::log_f32 below
// log_f32 is a fixed sequence of float32 + - * (Cephes logf polynomial), so the three
// implementations agree bit for bit as long as no compiler contracts a*b+c into an FMA:
// C++ files that include this header are compiled with -ffp-contract=off (setup.py
// FP_EXACT_SOURCES, checked by tests/test_build.py), Triton launches pass enable_fp_fusion=False.
#pragma once
#include <cmath>
#include <cstdint>

#include "vqfast/macros.h"

namespace vqfast {
namespace philox {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // key increments (Weyl)
constexpr int kRounds = 10;

struct Words {
  uint32_t w[4];
};

// Philox4x32-10 of one counter under one key.
VQFAST_HD Words philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return Words{{c0, c1, c2, c3}};
}

// The 4 words of block `block` (elements 4*block .. 4*block+3) of `stream`.
VQFAST_HD Words block_words(uint64_t key, uint32_t stream, uint64_t block) {
  return philox4x32(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), stream, 0u,
                    static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
}

// The word of element `i` of `stream` (one Philox call; kernels that walk consecutive
// elements should call block_words once per 4 elements instead).
VQFAST_HD uint32_t element_word(uint64_t key, uint32_t stream, uint64_t i) {
  return block_words(key, stream, i >> 2).w[i & 3];
}

}  // namespace philox

VQFAST_HD float bits_to_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  return __builtin_bit_cast(float, b);
#endif
}

VQFAST_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return __builtin_bit_cast(uint32_t, f);
#endif
}

// uniform in (0, 1) from the top 23 bits of w: an odd multiple of 2^-24 (exact in fp32).
VQFAST_HD float uniform_from_word(uint32_t w) {
  return static_cast<float>(static_cast<int32_t>(((w >> 9) << 1) | 1u)) * 5.9604644775390625e-08f;
}

// Natural log of a positive normal float32 (Cephes logf: range reduction to
// m in [sqrt(1/2), sqrt(2)), degree-8 polynomial, ln2 split in two). Max error ~1 ulp.
// Branch-free so the CPU loops vectorize; the reference and Triton copies do the
// same operations in the same order.
VQFAST_HD float log_f32(float x) {
  const uint32_t b = float_to_bits(x);
  int32_t e = static_cast<int32_t>((b >> 23) & 0xffu) - 127;
  float m = bits_to_float((b & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float f = m - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f + -1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f + -1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f + -1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f + -2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float fe = static_cast<float>(e);
  float y = f * z * p;
  y = y + fe * -2.12194440e-4f;
  y = y + z * -0.5f;
  float r = f + y;
  r = r + fe * 0.693359375f;
  return r;
}

VQFAST_HD float gumbel_from_word(uint32_t w) {
  return -log_f32(-log_f32(uniform_from_word(w)));
}

// Forced inlining on the host: a call left in a loop body stops GCC from vectorizing it.
#if defined(__CUDACC__)
#define VQFAST_FI VQFAST_HD
#else
#define VQFAST_FI inline __attribute__((always_inline))
#endif

// e^x for x <= 88 (Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, degree-5 polynomial in r); 0 below -87.3
// and for -inf. Max error ~2 ulp. vqfast/reference/random.py exp_f32 repeats it bit for bit.
VQFAST_FI float exp_f32(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // n = nearest integer to x / ln2 by the 1.5 * 2^23 trick (|x / ln2| < 2^22; no floor call, which
  // GCC does not vectorize here).
  const float fx = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
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
  // NaN x: the result is NaN whatever the scale; 1 (n = 0) is the scale the reference's int32
  // conversion of NaN gives, and a float-to-int conversion of NaN would be undefined here.
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(fx == fx ? fx : 0.0f) + 127) << 23);
  return x < -87.0f ? 0.0f : y * scale;
}

// Categorical draws from softmax(x) with 4 words per trial instead of one Gumbel per element
// (scheme and proof: vqfast/random.py "Categorical draws"; vqfast/reference/random.py
// `categorical` is the oracle). The proposal is integer-valued, so every backend sums it
// exactly in any order; the acceptance test is a fixed sequence of float32 operations.
namespace cat {

constexpr int kBlock = 256;           // elements per proposal block
constexpr int kTrials = 64;           // trial j of row r uses Philox block (r << 6) + j; the last accepts
constexpr float kC = 12102203.0f;     // float32(log2(e) * 2^23)
constexpr float kClampIn = -251658240.0f;  // -30 * 2^23
constexpr float kClampOut = 318767104.0f;  // 38 * 2^23
constexpr float kMargin = 1.000244140625f;  // 1 + 2^-12

// Proposal weight of x in a block of max mb: trunc of the float with bits t + (150 << 23),
// t = trunc((x - mb) C) (a piecewise-linear 2^23 * 2^((x - mb) log2 e), never below it), plus 1;
// 0 for x = -inf. At most 2^23 + 1.
VQFAST_FI int32_t in_block_weight(float x, float mb) {
  float y = (x - mb) * kC;
  y = y > kClampIn ? y : kClampIn;
  const int32_t t = static_cast<int32_t>(y);
  const float f = bits_to_float(static_cast<uint32_t>(t + (150 << 23)));
  return x > -INFINITY ? static_cast<int32_t>(f) + 1 : 0;
}

// Weight of a block with in-block sum s and max mb in a row of max m:
// ceil(s (2^24 - phi) / 2^(24 + sh)), (m - mb) C = sh 2^23 + phi, sh clamped to 38.
VQFAST_HD uint64_t block_weight(uint64_t s, float m, float mb) {
  if (s == 0) return 0;
  float e = (m - mb) * kC;
  e = e < kClampOut ? e : kClampOut;
  const int64_t ei = static_cast<int64_t>(e);
  const int64_t sh = (ei >> 23) < 38 ? (ei >> 23) : 38;
  const uint64_t phi = static_cast<uint64_t>(ei & 0x7FFFFF);
  const int shift = static_cast<int>(24 + sh);
  return (s * ((1ull << 24) - phi) + (1ull << shift) - 1) >> shift;
}

// floor(total * w / 2^32) for total < 2^62: the pick of a 32-bit word among total weight.
VQFAST_HD uint64_t floor_mul(uint64_t total, uint32_t w) {
  return (total >> 32) * w + (((total & 0xFFFFFFFFull) * w) >> 32);
}

// Acceptance of k (weight wk in its block, block sums s / s_hat) for a row of max m:
// (u M) s_hat wk < (e^(x - m) 2^23) s, all float32.
VQFAST_HD bool accept(uint32_t word, float x, float m, int32_t wk, uint64_t s, uint64_t s_hat) {
  const float lhs = ((uniform_from_word(word) * kMargin) * static_cast<float>(s_hat)) * static_cast<float>(wk);
  const float rhs = (exp_f32(x - m) * 8388608.0f) * static_cast<float>(s);
  return lhs < rhs;
}

}  // namespace cat

}  // namespace vqfast
