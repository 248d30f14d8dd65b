// Noise of vqfast's counter-based generator as a tensor (tests compare it bit for bit
// with vqfast/reference/random.py and triton_kernels/random.py; diffusion kernels and
// samplers call the header directly). Test- and benchmark-only: registered in the
// vqfast_bench namespace. Compiled with -ffp-contract=off (setup.py): log_f32 must not be
// contracted into FMAs.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include "vqfast/philox.h"

namespace vqfast {

// Elements start .. start+n-1 of `stream` under `key` (64-bit pattern in an int64):
// kind 0 -> words (int64), 1 -> uniform (fp32), 2 -> gumbel (fp32).
at::Tensor philox_noise_cpu(int64_t key, int64_t stream, int64_t start, int64_t n, int64_t kind) {
  TORCH_CHECK(n >= 0 && start >= 0, "philox_noise: start and n must be >= 0");
  TORCH_CHECK(kind >= 0 && kind <= 2, "philox_noise: kind must be 0, 1 or 2");
  const uint64_t k = static_cast<uint64_t>(key);
  const uint32_t s = static_cast<uint32_t>(stream);
  auto out = at::empty({n}, at::TensorOptions().dtype(kind == 0 ? at::kLong : at::kFloat));
  at::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const uint32_t w = philox::element_word(k, s, static_cast<uint64_t>(start + i));
      if (kind == 0) out.data_ptr<int64_t>()[i] = w;
      else if (kind == 1) out.data_ptr<float>()[i] = uniform_from_word(w);
      else out.data_ptr<float>()[i] = gumbel_from_word(w);
    }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(vqfast_bench, m) {
  m.def("philox_noise(int key, int stream, int start, int n, int kind) -> Tensor");
}

TORCH_LIBRARY_IMPL(vqfast_bench, CompositeExplicitAutograd, m) { m.impl("philox_noise", &philox_noise_cpu); }

}  // namespace vqfast
