"""residual_quantize (DESIGN.md op 4, RQ-VAE): validation, dispatch, losses."""
from __future__ import annotations

import operator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vqfast import _backend
from vqfast.ops import _validate
from vqfast.ops.nearest_code import _METRIC_ID, search_codebook
from vqfast.reference import nearest_code as ref_nc
from vqfast.reference.residual import level_codebooks

HAS = ("cpu", "triton", "cuda")  # backends with a residual_quantize kernel besides the reference


def _run(x: torch.Tensor, codebook: torch.Tensor, depth: int, metric: str,
         backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, d] contiguous, codebook [K, d] or [depth, K, d] ->
    z_q [N, d] (sum of the depth codes, added in fp32 in level order, in x's dtype), idx [N, depth]."""
    if backend == "reference":
        r, total, idx = x.float(), torch.zeros_like(x, dtype=torch.float32), []
        for cb in level_codebooks(codebook, depth):
            k, _ = ref_nc.nearest_code(r, cb, metric)
            c = cb.index_select(0, k).float()
            r, total = r - c, total + c
            idx.append(k)
        return total.to(x.dtype), torch.stack(idx, dim=1)
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
    depth_arg = depth
    _validate.tensor("x", x, min_dim=1)
    _validate.tensor("codebook", codebook)
    if codebook.dim() not in (2, 3):
        raise ValueError(f"codebook must be [K, d] (shared) or [depth, K, d] (per level), "
                         f"got shape {tuple(codebook.shape)}")
    if codebook.shape[-2] < 1 or (codebook.dim() == 3 and codebook.shape[0] < 1):
        raise ValueError(f"codebook is empty: shape {tuple(codebook.shape)}, need at least one code")
    if codebook.shape[-1] < 1:
        raise ValueError(f"codebook has d=0: shape {tuple(codebook.shape)}, need d >= 1")
    if codebook.shape[-1] != x.shape[-1]:
        raise ValueError(f"x has d={x.shape[-1]} but codebook has d={codebook.shape[-1]}")
    if depth is None:
        if codebook.dim() == 2:
            raise ValueError("depth is required with a shared codebook [K, d]")
        depth = codebook.shape[0]
    try:  # numpy and 0-d tensor integers too
        depth = operator.index(depth) if not isinstance(depth, bool) else None
    except TypeError:
        depth = None
    if depth is None:
        raise TypeError(f"depth must be an int, got {type(depth_arg).__name__}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if codebook.dim() == 3 and codebook.shape[0] != depth:
        raise ValueError(f"depth={depth} but codebook has {codebook.shape[0]} levels "
                         f"(shape {tuple(codebook.shape)})")
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
    codes = torch.stack([F.embedding(idx[..., i], cb) for i, cb in enumerate(level_codebooks(codebook, depth))],
                        dim=-2).float()
    partial = codes.cumsum(dim=-2)
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
