// Machine ceilings for the benchmarks (each op is timed beside the machine's own limits).
// exp_sum_ceiling times one vectorized e^x per value read from memory, the exp that every
// log-sum-exp and softmax normalizer of the sampling and diffusion kernels uses
// (sampling_row.h exp512_nonpos), with nothing else: the least time an op that needs a
// softmax normalizer of its logits can take here.
//
// Benchmark-only: registered in the vqfast_bench namespace, not among the vqfast_cpu ops.
// Compiled with -ffp-contract=off (setup.py; it includes sampling_row.h). Built twice, portable
// and AVX-512, one picked at run time (isa.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "isa.h"
#include "vqfast/log_softmax.h"
#include "vqfast/philox.h"

VQFAST_ISA_TARGET_BEGIN
#include "sampling_row.h"

namespace vqfast {
namespace VQFAST_ISA {

// x [N, V] fp32 contiguous -> [N] fp32, sum_v e^(-|x_v|).
at::Tensor exp_sum_ceiling_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat,
              "exp_sum_ceiling: contiguous fp32 [N, V] expected");
  const int64_t N = x.size(0), V = x.size(1);
  auto out = at::empty({N}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * V;
      float s = 0.0f;
      int64_t v = 0;
#if VQFAST_AVX512
      const __m512 sign = _mm512_set1_ps(-0.0f);
      __m512 acc = _mm512_setzero_ps();
      for (; v + 16 <= V; v += 16)
        acc = _mm512_add_ps(acc, sampling::exp512_nonpos(_mm512_or_ps(_mm512_loadu_ps(row + v), sign)));
      s = _mm512_reduce_add_ps(acc);
#endif
      for (; v < V; ++v) s += exp_f32(-std::fabs(row[v]));
      op[r] = s;
    }
  });
  return out;
}

}  // namespace VQFAST_ISA
}  // namespace vqfast
VQFAST_ISA_TARGET_END

#if !VQFAST_AVX512
VQFAST_AVX512_DECLARE(exp_sum_ceiling_cpu)

TORCH_LIBRARY_FRAGMENT(vqfast_bench, m) { m.def("exp_sum_ceiling(Tensor x) -> Tensor"); }

TORCH_LIBRARY_IMPL(vqfast_bench, CPU, m) { m.impl("exp_sum_ceiling", VQFAST_ISA_PICK(exp_sum_ceiling_cpu)); }
#endif
