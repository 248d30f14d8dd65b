"""nearest_code / quantize fused with ema_statistics: one call searches a batch and
returns the per-code counts and sums of the same batch.

The CPU kernel reads x from memory once: each superblock of rows is searched, then its
rows, still in cache, are added into the sums. Counts and sums are bit-identical to
ema_statistics(x, idx, K) (and so deterministic for every thread count); idx, dist and
codes are those of nearest_code / quantize. Other backends run the two ops' kernels
back to back.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vqfast import _backend
from vqfast.ops import ema as _ema
from vqfast.ops.nearest_code import (_METRIC_ID, QuantizeOutput, _check, _quantize_backward, _quantize_op,
                                     _quantize_setup, _run)
from vqfast.ops._straight_through import straight_through
from vqfast.reference import ema as ref_ema
from vqfast.reference import quantize_statistics as ref

HAS = ("cpu", "triton", "cuda")  # "cpu" fused; the GPU backends compose nearest_code's and ema_statistics' kernels


def _statistics(x, idx, K, backend):
    if backend == "reference":
        return ref_ema.ema_statistics(x, idx, K)
    name = _backend.resolve("ema_statistics", "auto", x.device, has=_ema.HAS)
    return _ema._run_statistics(x, idx, K, name)


@torch.library.custom_op("vqfast::nearest_code_statistics", mutates_args=())
def _nearest_code_statistics_op(x: torch.Tensor, codebook: torch.Tensor, metric: str, backend: str
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "cpu":
        _, idx, dist, _, counts, sums = torch.ops.vqfast_cpu.quantize_statistics(
            x, codebook.detach(), _METRIC_ID[metric], False)
        return idx, dist, counts, sums
    if backend == "reference":
        return ref.nearest_code_with_statistics(x, codebook, metric)
    idx, dist = _run(x, codebook, metric, backend)
    return (idx, dist, *_statistics(x, idx, codebook.shape[0], backend))


@_nearest_code_statistics_op.register_fake
def _(x, codebook, metric, backend):
    n, K = x.shape[0], codebook.shape[0]
    f32 = dict(dtype=torch.float32)
    return (x.new_empty(n, dtype=torch.long), x.new_empty(n, **f32), x.new_empty(K, **f32),
            x.new_empty(K, x.shape[1], **f32))


@torch.library.custom_op("vqfast::quantize_statistics", mutates_args=())
def _quantize_statistics_op(x: torch.Tensor, codebook: torch.Tensor, metric: str, backend: str
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, d] -> codes [N, d], idx [N], sq_err [N] fp64 (as vqfast::quantize), counts [K], sums [K, d]."""
    if backend == "cpu":
        codes, idx, _, sq_err, counts, sums = torch.ops.vqfast_cpu.quantize_statistics(
            x, codebook.detach(), _METRIC_ID[metric], True)
        return codes, idx, sq_err, counts, sums
    codes, idx, sq_err = _quantize_op(x, codebook.detach(), metric, backend)
    return (codes, idx, sq_err, *_statistics(x, idx, codebook.shape[0], backend))


@_quantize_statistics_op.register_fake
def _(x, codebook, metric, backend):
    n, K = x.shape[0], codebook.shape[0]
    f32 = dict(dtype=torch.float32)
    return (x.new_empty(x.shape), x.new_empty(n, dtype=torch.long), x.new_empty(n, dtype=torch.float64),
            x.new_empty(K, **f32), x.new_empty(K, x.shape[1], **f32))


def _quantize_statistics_backward(ctx, grad_codes, grad_idx, grad_sq_err, _grad_counts, _grad_sums):
    return _quantize_backward(ctx, grad_codes, grad_idx, grad_sq_err)


_quantize_statistics_op.register_autograd(_quantize_statistics_backward, setup_context=_quantize_setup)


class CodeStatistics(NamedTuple):
    """indices [...] and dist [...] as nearest_code; counts [K] and sums [K, d] fp32 as
    ema_statistics(x, indices, K)."""

    indices: torch.Tensor
    dist: torch.Tensor
    counts: torch.Tensor
    sums: torch.Tensor


def nearest_code_with_statistics(x: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2",
                                 backend: str = "auto") -> CodeStatistics:
    """nearest_code and ema_statistics of the same batch in one pass over x.

    x [..., d] (fp32/fp16/bf16), codebook [K, d] -> CodeStatistics(indices [...] int64,
    dist [...] fp32, counts [K] fp32, sums [K, d] fp32). Equals nearest_code(x, codebook)
    followed by ema_statistics(x, indices, K) (on the CPU bit for bit, every thread count).
    With cosine, sums add the rows of x as given (not normalized), like ema_statistics.

        idx, dist, counts, sums = vqfast.ops.nearest_code_with_statistics(x, codebook)
    """
    name = _check(x, codebook, metric, backend, "nearest_code_with_statistics", HAS)
    lead = x.shape[:-1]
    flat = x.detach().reshape(-1, x.shape[-1]).contiguous()
    idx, dist, counts, sums = _nearest_code_statistics_op(flat, codebook.detach(), metric, name)
    return CodeStatistics(idx.reshape(lead), dist.reshape(lead), counts, sums)


class QuantizeStatistics(NamedTuple):
    """quantized: the QuantizeOutput of quantize; counts [K], sums [K, d] fp32 as
    ema_statistics(x, quantized.indices, K)."""

    quantized: QuantizeOutput
    counts: torch.Tensor
    sums: torch.Tensor


def quantize_with_statistics(x: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2",
                             backend: str = "auto") -> QuantizeStatistics:
    """quantize (straight-through z_q, indices, commitment loss) and ema_statistics of the
    same batch in one pass over x: what an EMA quantizer's training step needs.

    x [..., d], codebook [K, d] -> QuantizeStatistics(QuantizeOutput as quantize(x,
    codebook), counts [K] fp32, sums [K, d] fp32). Statistics carry no gradient.

        (z_q, idx, commit), counts, sums = vqfast.ops.quantize_with_statistics(x, codebook)
    """
    name = _check(x, codebook, metric, backend, "quantize_with_statistics", HAS)
    flat = x.reshape(-1, x.shape[-1])
    codes, idx, sq_err, counts, sums = _quantize_statistics_op(flat.detach().contiguous(), codebook, metric, name)
    codes = codes.reshape(x.shape)
    z_q, commit = straight_through(x, codes, sq_err)
    out = QuantizeOutput(z_q, idx.reshape(x.shape[:-1]), commit)
    if codebook.requires_grad:
        out.codebook_loss = F.mse_loss(x.detach().float(), codes.float())
    # The statistics carry no gradient: detached, they do not keep the autograd graph (and the
    # codebook) alive while a caller holds them.
    return QuantizeStatistics(out, counts.detach(), sums.detach())
