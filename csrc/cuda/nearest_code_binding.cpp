// ATen binding of csrc/cuda/nearest_code.cu (GPU builds only):
// torch.ops.vqfast_cuda.nearest_code / quantize.
#include <torch/library.h>

#include "binding_util.h"

namespace vqfast::cuda {
namespace {

void check_args(const at::Tensor& x, const at::Tensor& codebook, int64_t metric, const char* op) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, op, ": x must be a [N, d] CUDA tensor");
  TORCH_CHECK(codebook.dim() == 2 && codebook.size(1) == x.size(1) && codebook.size(0) >= 1, op,
              ": codebook must be [K, d] with K >= 1 and x's d");
  TORCH_CHECK(metric == kMetricL2 || metric == kMetricCosine, op, ": unknown metric ", metric);
}

// x [N, d], codebook [K, d] fp32 search codebook -> idx [N] int64, dist [N] fp32.
std::tuple<at::Tensor, at::Tensor> nearest_code_cuda(const at::Tensor& x, const at::Tensor& codebook,
                                                     int64_t metric) {
  check_args(x, codebook, metric, "nearest_code");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xr = rows_view(x);
  const auto cb = search_layout(codebook, "codebook");
  const auto c_sq = cb.square().sum(1);
  auto idx = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  auto dist = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  check(nearest_code(xr.data_ptr(), dtype_of(xr, "x"), xr.size(0), xr.size(1), xr.stride(0), cb.data_ptr<float>(),
                     c_sq.data_ptr<float>(), cb.size(0), metric == kMetricL2, idx.data_ptr<int64_t>(),
                     dist.data_ptr<float>(), nullptr, nullptr, stream_of(x)),
        "nearest_code");
  return {idx, dist};
}

// As nearest_code_cuda, plus the chosen rows of source [K, d] (the caller's codebook)
// gathered in the same kernel -> codes [N, d] in x's dtype, idx [N].
std::tuple<at::Tensor, at::Tensor> quantize_cuda(const at::Tensor& x, const at::Tensor& codebook,
                                                 const at::Tensor& source, int64_t metric) {
  check_args(x, codebook, metric, "quantize");
  TORCH_CHECK(source.sizes() == codebook.sizes(), "quantize: source must have the codebook's shape");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xr = rows_view(x);
  const auto cb = search_layout(codebook, "codebook");
  const auto c_sq = cb.square().sum(1);
  const auto src = source.to(x.scalar_type()).contiguous();
  auto idx = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  auto codes = at::empty({x.size(0), x.size(1)}, x.options());
  check(nearest_code(xr.data_ptr(), dtype_of(xr, "x"), xr.size(0), xr.size(1), xr.stride(0), cb.data_ptr<float>(),
                     c_sq.data_ptr<float>(), cb.size(0), metric == kMetricL2, idx.data_ptr<int64_t>(), nullptr,
                     src.data_ptr(), codes.data_ptr(), stream_of(x)),
        "quantize");
  return {codes, idx};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vqfast_cuda, m) {
  m.def("nearest_code(Tensor x, Tensor codebook, int metric) -> (Tensor, Tensor)");
  m.def("quantize(Tensor x, Tensor codebook, Tensor source, int metric) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vqfast_cuda, CUDA, m) {
  m.impl("nearest_code", &nearest_code_cuda);
  m.impl("quantize", &quantize_cuda);
}

}  // namespace vqfast::cuda
