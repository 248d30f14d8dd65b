"""dual_codebook_quantize (PUT Sec. 2-3): validation, dispatch, autograd."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vqfast import _backend
from vqfast.ops import _validate
from vqfast.ops._straight_through import row_sq_err, straight_through
from vqfast.ops.nearest_code import _METRIC_ID, search_codebook
from vqfast.reference import dual_codebook as ref

HAS = ("cpu", "triton", "cuda")  # backends with a dual_codebook_quantize kernel besides the reference


def _run(x: torch.Tensor, visible: torch.Tensor, e: torch.Tensor, e2: torch.Tensor, metric: str,
         backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, d] contiguous, visible [N] bool -> codes [N, d] (x's dtype), idx [N] (masked
    rows offset by K), sq_err [N] fp64 = ||x - codes||^2."""
    if backend == "cpu":  # routing, search, gather and squared error in one pass
        return torch.ops.vqfast_cpu.dual_codebook_quantize(x, visible, e.detach(), e2.detach(), _METRIC_ID[metric])
    codes, idx = _run_codes(x, visible, e.detach(), e2.detach(), metric, backend)
    return codes, idx, row_sq_err(x, codes)


def _run_codes(x, visible, e, e2, metric, backend):
    """_run for the backends whose kernels return codes and idx only."""
    if backend == "reference":
        _, idx, _, _ = ref.dual_codebook_quantize(x, visible, e, e2, metric)
        return torch.cat([e, e2]).index_select(0, idx).to(x.dtype), idx  # masked rows' idx are offset by K
    if backend == "triton":
        from vqfast.triton_kernels.dual_codebook import dual_codebook_quantize_triton
        return dual_codebook_quantize_triton(x, visible, search_codebook(e, metric), search_codebook(e2, metric),
                                             e, e2, metric)
    if backend == "cuda":
        return torch.ops.vqfast_cuda.dual_codebook_quantize(x, visible, search_codebook(e, metric),
                                                            search_codebook(e2, metric), e.detach(), e2.detach(),
                                                            _METRIC_ID[metric])
    raise AssertionError(f"unreachable backend {backend}")


@torch.library.custom_op("vqfast::dual_codebook_quantize", mutates_args=())
def _dual_op(x: torch.Tensor, visible: torch.Tensor, e: torch.Tensor, e2: torch.Tensor, metric: str,
             backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    codes, idx, sq_err = _run(x, visible, e, e2, metric, backend)
    return codes, idx, sq_err


@_dual_op.register_fake
def _(x, visible, e, e2, metric, backend):
    n = x.shape[0]
    return x.new_empty(x.shape), x.new_empty(n, dtype=torch.long), x.new_empty(n, dtype=torch.float64)


def _dual_setup(ctx, inputs, output):
    _, visible, e, e2, _, _ = inputs
    ctx.shapes = (e.shape, e.dtype, e2.shape, e2.dtype)
    ctx.save_for_backward(visible, output[1])


def _dual_backward(ctx, grad_codes, _grad_idx, _grad_sq_err):
    visible, idx = ctx.saved_tensors
    e_shape, e_dtype, e2_shape, e2_dtype = ctx.shapes
    g = grad_codes.float()
    grad_e = g.new_zeros(e_shape).index_add_(0, idx[visible], g[visible])
    grad_e2 = g.new_zeros(e2_shape).index_add_(0, idx[~visible] - e_shape[0], g[~visible])
    return None, None, grad_e.to(e_dtype), grad_e2.to(e2_dtype), None, None


_dual_op.register_autograd(_dual_backward, setup_context=_dual_setup)


class _DualFields(NamedTuple):
    z_q: torch.Tensor
    indices: torch.Tensor
    commit_loss: torch.Tensor


class DualCodebookOutput(_DualFields):
    """(z_q, indices, commit_loss) as QuantizeOutput; `.codebook_loss` = mean((sg(x) - c)^2)
    when e or e2 requires grad, else None."""

    codebook_loss: torch.Tensor | None = None


def _check(x, visible, e, e2, metric, backend) -> str:
    _validate.tensor("x", x, min_dim=1)
    _validate.codebook("e", e, x.shape[-1])
    _validate.codebook("e2", e2, x.shape[-1])
    _validate.metric(metric)
    _validate.tensor("visible", visible, dtypes=(torch.bool,))
    _validate.shape("visible", visible, x.shape[:-1], "x.shape[:-1]")
    device = _validate.same_device(x=x, visible=visible, e=e, e2=e2)
    return _backend.resolve("dual_codebook_quantize", backend, device, has=HAS)


def dual_codebook_quantize(x: torch.Tensor, visible: torch.Tensor, e: torch.Tensor, e2: torch.Tensor, *,
                           metric: str = "l2", backend: str = "auto") -> DualCodebookOutput:
    """Quantize visible rows with e and masked rows with e2 in one pass (PUT's dual codebook).

    x [..., d], visible [...] bool, e [K, d], e2 [K2, d] -> DualCodebookOutput(
    z_q [..., d] in x's dtype, its value exactly the chosen codes, with the identity
    gradient to x; indices [...] int64 (visible: in [0, K); masked: nearest e2 code + K,
    in [K, K + K2)); commit_loss fp32, from the kernel's per-row squared errors (no extra
    pass over x)), plus `.codebook_loss` (see DualCodebookOutput). Ties go to the lowest index; a
    row with NaN/inf takes code 0 of its codebook (as nearest_code).

        z_q, idx, commit = vqfast.ops.dual_codebook_quantize(x, visible, e, e2)
    """
    name = _check(x, visible, e, e2, metric, backend)
    d = x.shape[-1]
    codes, idx, sq_err = _dual_op(x.detach().reshape(-1, d).contiguous(), visible.reshape(-1).contiguous(),
                                  e, e2, metric, name)
    codes = codes.reshape(x.shape)
    z_q, commit = straight_through(x, codes, sq_err)
    out = DualCodebookOutput(z_q, idx.reshape(x.shape[:-1]), commit)
    if e.requires_grad or e2.requires_grad:
        out.codebook_loss = F.mse_loss(x.detach().float(), codes.float())
    return out
