"""nearest_code and quantize: validation, dispatch, autograd."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vqfast import _backend
from vqfast.ops import _validate
from vqfast.ops._straight_through import row_sq_err, straight_through
from vqfast.reference import nearest_code as ref

HAS = ("cpu", "triton", "cuda")  # backends with a nearest_code kernel besides the reference
_METRIC_ID = {"l2": 0, "cosine": 1}


def search_codebook(codebook: torch.Tensor, metric: str) -> torch.Tensor:
    """The codebook as the kernels search it: fp32, rows L2-normalized for cosine (in float64:
    an fp32 |c|^2 overflows for codes past ~1e19 and would zero them)."""
    cb = codebook.detach()
    if metric == "cosine":
        return F.normalize(cb.double(), dim=1, eps=1e-12).float().contiguous()
    return cb.float().contiguous()


def _run(x: torch.Tensor, codebook: torch.Tensor, metric: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, d] contiguous -> idx [N], dist [N] on the named backend."""
    if backend == "reference":
        return ref.nearest_code(x, codebook, metric)
    if backend == "cpu":  # takes the raw codebook: normalizes for cosine and re-ranks exactly itself
        return torch.ops.vqfast_cpu.nearest_code(x, codebook.detach(), _METRIC_ID[metric])
    cb = search_codebook(codebook, metric)
    if backend == "triton":
        from vqfast.triton_kernels.nearest_code import nearest_code_triton
        return nearest_code_triton(x, cb, metric, codebook)
    if backend == "cuda":
        return torch.ops.vqfast_cuda.nearest_code(x, cb, _METRIC_ID[metric])
    raise AssertionError(f"unreachable backend {backend}")


@torch.library.custom_op("vqfast::nearest_code", mutates_args=())
def _nearest_code_op(x: torch.Tensor, codebook: torch.Tensor, metric: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    idx, dist = _run(x, codebook, metric, backend)
    return idx, dist


@_nearest_code_op.register_fake
def _(x, codebook, metric, backend):
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.long), x.new_empty(n, dtype=torch.float32)


@torch.library.custom_op("vqfast::quantize", mutates_args=())
def _quantize_op(x: torch.Tensor, codebook: torch.Tensor, metric: str,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, d] -> codes [N, d] (x's dtype), idx [N], sq_err [N] fp64 = ||x - codes||^2."""
    if backend == "cpu":  # gather and squared error fused into the search
        return torch.ops.vqfast_cpu.quantize(x, codebook.detach(), _METRIC_ID[metric])
    if backend == "triton":  # gather fused into the search kernel
        from vqfast.triton_kernels.nearest_code import quantize_triton
        codes, idx = quantize_triton(x, search_codebook(codebook, metric), metric, codebook)
    elif backend == "cuda":  # gather fused into the search kernel
        codes, idx = torch.ops.vqfast_cuda.quantize(x, search_codebook(codebook, metric), codebook.detach(),
                                                    _METRIC_ID[metric])
    else:
        idx, _ = _run(x, codebook, metric, backend)
        codes = codebook.detach().index_select(0, idx).to(x.dtype)
    return codes, idx, row_sq_err(x, codes)


@_quantize_op.register_fake
def _(x, codebook, metric, backend):
    n = x.shape[0]
    return x.new_empty(x.shape), x.new_empty(n, dtype=torch.long), x.new_empty(n, dtype=torch.float64)


def _quantize_setup(ctx, inputs, output):
    _, codebook, _, _ = inputs
    ctx.codebook_shape, ctx.codebook_dtype = codebook.shape, codebook.dtype
    ctx.save_for_backward(output[1])


def _quantize_backward(ctx, grad_codes, _grad_idx, _grad_sq_err):
    (idx,) = ctx.saved_tensors
    grad_cb = grad_codes.new_zeros(ctx.codebook_shape, dtype=torch.float32)
    grad_cb.index_add_(0, idx, grad_codes.float())
    # x gets no gradient through the argmin: the straight-through path is added outside.
    # Only codebook_loss (codes with grad) reaches here; z_q is the detached codes.
    return None, grad_cb.to(ctx.codebook_dtype), None, None


_quantize_op.register_autograd(_quantize_backward, setup_context=_quantize_setup)


def _check(x, codebook, metric, backend, op, has=HAS):
    """Validates a search's arguments; the backend op runs on (`has`: the backends built for it)."""
    _validate.tensor("x", x, min_dim=1)
    _validate.codebook("codebook", codebook, x.shape[-1])
    _validate.metric(metric)
    device = _validate.same_device(x=x, codebook=codebook)
    return _backend.resolve(op, backend, device, has=has)


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2",
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest code for every row, without an N x K distance matrix.

    x [..., d] (fp32/fp16/bf16), codebook [K, d] -> idx [...] int64, dist [...] fp32.
    l2: dist = ||x - c_idx||^2; cosine: idx maximizes cos(x, c), dist = 1 - cos.
    Ties go to the lowest index; rows of x with NaN/inf get idx 0 and dist NaN.

        idx, dist = vqfast.ops.nearest_code(torch.randn(8, 64), torch.randn(512, 64))
    """
    name = _check(x, codebook, metric, backend, "nearest_code")
    lead = x.shape[:-1]
    idx, dist = _nearest_code_op(x.detach().reshape(-1, x.shape[-1]).contiguous(), codebook.detach(), metric, name)
    return idx.reshape(lead), dist.reshape(lead)


class _QuantizeFields(NamedTuple):
    z_q: torch.Tensor
    indices: torch.Tensor
    commit_loss: torch.Tensor


class QuantizeOutput(_QuantizeFields):
    """(z_q, indices, commit_loss); `.codebook_loss` is the codebook term when the
    codebook requires grad (learned by gradient), else None."""

    codebook_loss: torch.Tensor | None = None


def quantize(x: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2",
             backend: str = "auto") -> QuantizeOutput:
    """Quantize with a straight-through gradient; search, gather and loss in one pass.

    x [..., d], codebook [K, d] -> QuantizeOutput(z_q [..., d] in x's dtype, its value
    exactly the chosen codes with the identity gradient to x, indices [...],
    commit_loss = mean((x - sg(c))^2) fp32), plus `.codebook_loss` =
    mean((sg(x) - c)^2) when codebook.requires_grad. A NaN/inf row takes code 0 (its
    commitment term is NaN).

        z_q, idx, commit = vqfast.ops.quantize(x, codebook)
    """
    name = _check(x, codebook, metric, backend, "quantize")
    flat = x.reshape(-1, x.shape[-1])
    codes, idx, sq_err = _quantize_op(flat.detach().contiguous(), codebook, metric, name)
    codes = codes.reshape(x.shape)
    z_q, commit = straight_through(x, codes, sq_err)
    out = QuantizeOutput(z_q, idx.reshape(x.shape[:-1]), commit)
    if codebook.requires_grad:
        out.codebook_loss = F.mse_loss(x.detach().float(), codes.float())
    return out
