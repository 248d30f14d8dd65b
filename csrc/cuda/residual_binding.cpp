// ATen binding of csrc/cuda/residual.cu (GPU builds only):
// torch.ops.vqfast_cuda.residual_quantize.
#include <torch/library.h>

#include "binding_util.h"

namespace vqfast::cuda {
namespace {

// x [N, d]; codebook the fp32 search codebook [K, d] (shared by every level) or
// [depth, K, d]; source the caller's codebook of the same shape ->
// z_q [N, d] in x's dtype (sum of the codes), idx [N, depth].
std::tuple<at::Tensor, at::Tensor> residual_quantize_cuda(const at::Tensor& x, const at::Tensor& codebook,
                                                          const at::Tensor& source, int64_t depth, int64_t metric) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, "residual_quantize: x must be a [N, d] CUDA tensor");
  TORCH_CHECK(depth >= 1, "residual_quantize: depth must be >= 1");
  TORCH_CHECK((codebook.dim() == 2 || (codebook.dim() == 3 && codebook.size(0) == depth)) &&
                  codebook.size(-1) == x.size(1) && codebook.size(-2) >= 1,
              "residual_quantize: codebook must be [K, d] or [depth, K, d] with K >= 1 and x's d");
  TORCH_CHECK(source.sizes() == codebook.sizes(), "residual_quantize: source must have the codebook's shape");
  TORCH_CHECK(metric == kMetricL2 || metric == kMetricCosine, "residual_quantize: unknown metric ", metric);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xr = rows_view(x);
  const auto cb = search_layout(codebook, "codebook");
  const auto c_sq = cb.square().sum(-1).contiguous();
  const auto src = source.to(at::kFloat).contiguous();  // codes are added in fp32
  auto residual = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kFloat));
  auto idx = at::empty({x.size(0), depth}, x.options().dtype(at::kLong));
  auto z_q = at::empty({x.size(0), x.size(1)}, x.options());
  check(residual_quantize(xr.data_ptr(), dtype_of(xr, "x"), xr.size(0), xr.size(1), xr.stride(0),
                          cb.data_ptr<float>(), c_sq.data_ptr<float>(), src.data_ptr<float>(), cb.size(-2), depth,
                          codebook.dim() == 2, metric == kMetricL2, residual.data_ptr<float>(),
                          idx.data_ptr<int64_t>(), z_q.data_ptr(), stream_of(x)),
        "residual_quantize");
  return {z_q, idx};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vqfast_cuda, m) {
  m.def("residual_quantize(Tensor x, Tensor codebook, Tensor source, int depth, int metric) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vqfast_cuda, CUDA, m) { m.impl("residual_quantize", &residual_quantize_cuda); }

}  // namespace vqfast::cuda
