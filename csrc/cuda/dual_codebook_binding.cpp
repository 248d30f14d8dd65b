// ATen binding of csrc/cuda/dual_codebook.cu (GPU builds only):
// torch.ops.vqfast_cuda.dual_codebook_quantize.
#include <torch/library.h>

#include "binding_util.h"

namespace vqfast::cuda {
namespace {

// x [N, d], visible [N] bool, e [K, d] / e2 [K2, d] fp32 search codebooks, e_src / e2_src
// the caller's codebooks -> codes [N, d] in x's dtype, idx [N] (masked rows offset by K).
std::tuple<at::Tensor, at::Tensor> dual_codebook_quantize_cuda(const at::Tensor& x, const at::Tensor& visible,
                                                               const at::Tensor& e, const at::Tensor& e2,
                                                               const at::Tensor& e_src, const at::Tensor& e2_src,
                                                               int64_t metric) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, "dual_codebook_quantize: x must be a [N, d] CUDA tensor");
  TORCH_CHECK(visible.scalar_type() == at::kBool && visible.dim() == 1 && visible.size(0) == x.size(0),
              "dual_codebook_quantize: visible must be a [N] bool tensor");
  for (const auto* cb : {&e, &e2})
    TORCH_CHECK(cb->dim() == 2 && cb->size(1) == x.size(1) && cb->size(0) >= 1,
                "dual_codebook_quantize: codebooks must be [K, d] with K >= 1 and x's d");
  TORCH_CHECK(e_src.sizes() == e.sizes() && e2_src.sizes() == e2.sizes(),
              "dual_codebook_quantize: e_src / e2_src must have the shapes of e / e2");
  TORCH_CHECK(metric == kMetricL2 || metric == kMetricCosine, "dual_codebook_quantize: unknown metric ", metric);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xr = rows_view(x);
  const auto vis = visible.contiguous().view(at::kByte);
  const auto order = at::argsort(1 - vis, /*stable=*/true);  // visible rows first, each kind in row order
  const auto cb = search_layout(e, "e"), cb2 = search_layout(e2, "e2");
  const auto sq = cb.square().sum(1), sq2 = cb2.square().sum(1);
  const auto src = e_src.to(x.scalar_type()).contiguous(), src2 = e2_src.to(x.scalar_type()).contiguous();
  auto idx = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  auto codes = at::empty({x.size(0), x.size(1)}, x.options());
  check(dual_codebook_quantize(xr.data_ptr(), dtype_of(xr, "x"), xr.size(0), xr.size(1), xr.stride(0),
                               vis.data_ptr<uint8_t>(), order.data_ptr<int64_t>(), cb.data_ptr<float>(),
                               sq.data_ptr<float>(), cb.size(0), cb2.data_ptr<float>(), sq2.data_ptr<float>(),
                               cb2.size(0), metric == kMetricL2, src.data_ptr(), src2.data_ptr(),
                               idx.data_ptr<int64_t>(), codes.data_ptr(), stream_of(x)),
        "dual_codebook_quantize");
  return {codes, idx};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vqfast_cuda, m) {
  m.def("dual_codebook_quantize(Tensor x, Tensor visible, Tensor e, Tensor e2, Tensor e_src, Tensor e2_src, "
        "int metric) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vqfast_cuda, CUDA, m) { m.impl("dual_codebook_quantize", &dual_codebook_quantize_cuda); }

}  // namespace vqfast::cuda
