// The log-softmax normaliser of the confidence ops (gumbel_topk_select, select_and_sample_topk),
// bit-identical on every backend (vqfast/reference/sampling.py `log_normalizer` is the oracle,
// triton_kernels/sampling.py repeats it). For a float32 row x of max m:
//   q_v = trunc(exp_f32(x_v - m) * 2^40)   int64, 0 for x_v = -inf; exp_f32 <= 1, so q_v <= 2^40
//   S   = sum_v q_v                         exact in any order: S <= V 2^40 < 2^63 for V < 2^23
//   L   = log_f32(float32(S) * 2^-40)       float32(S) rounds to nearest even; S >= 2^40, so L >= 0
//   log softmax(x)_v = (x_v - m) - L
// Every step is an integer sum or a fixed float32 operation, so the order of the sum (threads,
// vector lanes, tiles) cannot change a bit. Include only from files compiled with
// -ffp-contract=off (setup.py): exp_f32 / log_f32 must not be contracted into FMAs.
#pragma once
#include <cstdint>

#include "vqfast/macros.h"
#include "vqfast/philox.h"

namespace vqfast {
namespace lse {

constexpr int kShift = 40;                      // q_v has 40 fraction bits
constexpr float kScale = 1099511627776.0f;      // 2^40
constexpr float kInvScale = 9.094947017729282e-13f;  // 2^-40
constexpr int64_t kMaxVocab = (int64_t{1} << 23) - 1;  // V 2^40 < 2^63
// exp_f32(d) * 2^40 < 1 for every d <= kZeroBelow (e^-28 < 0.77 * 2^-40): a block whose max is
// that far below the row max adds 0, term by term.
constexpr float kZeroBelow = -28.0f;

// q_v of x_v in a row of max m (x_v = -inf gives 0; x_v must not be NaN or +inf).
VQFAST_FI int64_t term(float x, float m) { return static_cast<int64_t>(exp_f32(x - m) * kScale); }

// L from the sum S of the terms of a row with a finite max.
VQFAST_HD float log_norm(int64_t s) { return log_f32(static_cast<float>(s) * kInvScale); }

}  // namespace lse
}  // namespace vqfast
