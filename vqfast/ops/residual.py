"""residual_quantize (RQ-VAE): validation, dispatch, losses."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vqfast import _backend
from vqfast.ops import _validate
from vqfast.ops.nearest_code import _METRIC_ID, search_codebook

HAS = ("cpu", "triton", "cuda")  # backends with a residual_quantize kernel besides the reference


def level_codebooks(codebook: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """[K, d] (shared by every level) or [D, K, d] (one per level) -> depth codebooks [K, d]."""
    return [codebook] * depth if codebook.dim() == 2 else list(codebook.unbind(0))


def _level_codes(idx: torch.Tensor, codebook: torch.Tensor, depth: int) -> torch.Tensor:
    """idx [..., depth] -> the chosen codes [..., depth, d] fp32 (differentiable in the codebook)."""
    return torch.stack([F.embedding(idx[..., i], cb) for i, cb in enumerate(level_codebooks(codebook, depth))],
                       dim=-2).float()


def _level_sum(idx: torch.Tensor, codebook: torch.Tensor, depth: int) -> torch.Tensor:
    """idx [N, depth] -> z_q [N, d]: the codes added in fp32 in level order, as the kernels do
    (cumsum on the CPU accumulates in float64, which rounds differently)."""
    codes = _level_codes(idx, codebook, depth).unbind(-2)
    total = codes[0]
    for c in codes[1:]:
        total = total + c
    return total


def _run(x: torch.Tensor, codebook: torch.Tensor, depth: int, metric: str,
         backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, d] contiguous, codebook [K, d] or [depth, K, d] ->
    z_q [N, d] (sum of the depth codes, added in fp32 in level order, in x's dtype), idx [N, depth]."""
    if backend == "reference":
        from vqfast.reference.residual import residual_quantize as reference
        _, idx, _, _ = reference(x, codebook, depth, metric)
        return _level_sum(idx, codebook, depth).to(x.dtype), idx
    if backend == "cpu":
        return torch.ops.vqfast_cpu.residual_quantize(x, codebook, depth, _METRIC_ID[metric])
    if backend == "triton":
        from vqfast.triton_kernels.residual import residual_quantize_triton
        cb = (search_codebook(codebook, metric) if codebook.dim() == 2
              else torch.stack([search_codebook(c, metric) for c in codebook]))
        return residual_quantize_triton(x, cb, codebook, depth, metric)
    if backend == "cuda":
        cb = (search_codebook(codebook, metric) if codebook.dim() == 2
              else torch.stack([search_codebook(c, metric) for c in codebook]))
        return torch.ops.vqfast_cuda.residual_quantize(x, cb, codebook.detach(), depth, _METRIC_ID[metric])
    raise AssertionError(f"unreachable backend {backend}")


@torch.library.custom_op("vqfast::residual_quantize", mutates_args=())
def _residual_op(x: torch.Tensor, codebook: torch.Tensor, depth: int, metric: str,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    z_q, idx = _run(x, codebook, depth, metric, backend)
    return z_q, idx


@_residual_op.register_fake
def _(x, codebook, depth, metric, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape[0], depth, dtype=torch.long)


class _ResidualFields(NamedTuple):
    z_q: torch.Tensor
    indices: torch.Tensor
    commit_loss: torch.Tensor


class ResidualQuantizeOutput(_ResidualFields):
    """(z_q, indices [..., depth], commit_loss); `.codebook_loss` when the codebook
    requires grad, else None (see residual_quantize)."""

    codebook_loss: torch.Tensor | None = None


def _check(x, codebook, depth, metric, backend) -> tuple[str, int]:
    _validate.tensor("x", x, min_dim=1)
    _validate.tensor("codebook", codebook, dim=(2, 3))
    _validate.codebook("codebook", codebook.flatten(0, -2), x.shape[-1])  # every level's codes, d
    if depth is None and codebook.dim() == 2:
        raise ValueError("depth is required with a shared codebook [K, d]")
    depth = _validate.integer("depth", codebook.shape[0] if depth is None else depth, low=1)
    if codebook.dim() == 3:
        _validate.shape("codebook", codebook, (depth, *codebook.shape[1:]), f"one [K, d] level per depth={depth}")
    _validate.metric(metric)
    device = _validate.same_device(x=x, codebook=codebook)
    return _backend.resolve("residual_quantize", backend, device, has=HAS), depth


def residual_quantize(x: torch.Tensor, codebook: torch.Tensor, depth: int | None = None, *,
                      metric: str = "l2", backend: str = "auto") -> ResidualQuantizeOutput:
    """RQ-VAE residual quantization: depth nearest-code searches, the residual kept in fp32.

    x [..., d], codebook [K, d] (shared by all levels; depth required) or [D, K, d]
    (one per level; depth defaults to D) -> ResidualQuantizeOutput(
    z_q [..., d] = sum of the depth codes, in x's dtype, straight-through gradient;
    indices [..., depth] int64; commit_loss = mean_i mean((x - sg(S_i))^2) over the
    partial sums S_i = c_1 + ... + c_i (RQ-VAE)), plus `.codebook_loss` =
    mean_i mean((sg(x) - S_i)^2) when codebook.requires_grad. r_0 = x,
    k_i = nearest(r_{i-1}) (ties: lowest index), r_i = r_{i-1} - c_{k_i}.
    Rows with NaN/inf take code 0 at every level.

        z_q, idx, commit = vqfast.ops.residual_quantize(x, codebook, depth=4)
    """
    name, depth = _check(x, codebook, depth, metric, backend)
    d = x.shape[-1]
    z_q, idx = _residual_op(x.detach().reshape(-1, d).contiguous(), codebook.detach().contiguous(),
                            depth, metric, name)
    idx = idx.reshape(*x.shape[:-1], depth)
    z_q = z_q.reshape(x.shape)
    # Partial sums S_1..S_depth for the losses; codes gathered again so the codebook gets gradients.
    partial = _level_codes(idx, codebook, depth).cumsum(dim=-2)
    xf = x.float().unsqueeze(-2)
    out = ResidualQuantizeOutput(x + (z_q - x).detach(), idx, _mean_square(xf - partial.detach()))
    if codebook.requires_grad:
        out.codebook_loss = _mean_square(xf.detach() - partial)
    return out


def _mean_square(diff: torch.Tensor) -> torch.Tensor:
    """mean(diff^2) as fp32 (NaN when empty, as mse_loss), the same whatever the thread count:
    each row's sum is one thread's, the rows are added in float64 (mse_loss's fp32 total
    changed in the last bit with torch.set_num_threads)."""
    return (diff.square().sum(-1).double().sum() / diff.numel()).float()
