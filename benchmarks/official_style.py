"""The quantizer ops as the papers' code writes them, for the official-style training rows.

taming-transformers, PUT and rq-vae-transformer search with the expanded distance
|z|^2 + |e|^2 - 2 z e^T (an N x K fp32 matrix) and argmin, and their EMA codebooks take the
per-code counts and sums from an N x K one-hot matrix. `official_ops()` swaps those
formulations in for vqfast's fused quantizer ops, and sends every other vqfast op (the
diffusion posterior, the samplers) to its PyTorch reference, for the duration of a step:

    with official_ops():
        loss = model(images).loss.total
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

from vqfast import ops
from vqfast.ops.dual_codebook import DualCodebookOutput
from vqfast.ops.nearest_code import QuantizeOutput
from vqfast.ops.quantize_statistics import QuantizeStatistics
from vqfast.ops.residual import ResidualQuantizeOutput


def _nearest(x: torch.Tensor, codebook: torch.Tensor, metric: str) -> torch.Tensor:
    """x [N, d], codebook [K, d] -> idx [N]: argmin of the expanded N x K distance matrix."""
    x, e = x.detach().float(), codebook.detach().float()
    if metric == "cosine":
        x, e = F.normalize(x, dim=1), F.normalize(e, dim=1)
    d = x.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * x @ e.t()
    return d.argmin(1)


def quantize(x, codebook, *, metric="l2", backend="auto"):
    flat = x.reshape(-1, x.shape[-1])
    idx = _nearest(flat, codebook, metric)
    codes = codebook[idx].reshape(x.shape)
    commit = F.mse_loss(x.float(), codes.detach().float())
    out = QuantizeOutput(x + (codes.detach().to(x.dtype) - x).detach(), idx.view(x.shape[:-1]), commit)
    if codebook.requires_grad:
        out.codebook_loss = F.mse_loss(x.detach().float(), codes.float())
    return out


def ema_statistics(x, idx, K, *, backend="auto"):
    onehot = F.one_hot(idx.reshape(-1), K).float()
    return onehot.sum(0), onehot.t() @ x.reshape(-1, x.shape[-1]).float()


def quantize_with_statistics(x, codebook, *, metric="l2", backend="auto"):
    out = quantize(x, codebook, metric=metric)
    counts, sums = ema_statistics(x.detach(), out.indices, codebook.shape[0])
    return QuantizeStatistics(out, counts, sums)


def dual_codebook_quantize(x, visible, e, e2, *, metric="l2", backend="auto"):
    flat, vis = x.reshape(-1, x.shape[-1]), visible.reshape(-1)
    idx = torch.where(vis, _nearest(flat, e, metric), _nearest(flat, e2, metric) + e.shape[0])
    codes = torch.cat([e, e2])[idx].reshape(x.shape)
    commit = F.mse_loss(x.float(), codes.detach().float())
    out = DualCodebookOutput(x + (codes.detach().to(x.dtype) - x).detach(), idx.view(x.shape[:-1]), commit)
    if e.requires_grad or e2.requires_grad:
        out.codebook_loss = F.mse_loss(x.detach().float(), codes.float())
    return out


def residual_quantize(x, codebook, depth=None, *, metric="l2", backend="auto"):
    levels = list(codebook) if codebook.dim() == 3 else [codebook] * depth
    flat = x.reshape(-1, x.shape[-1]).float()
    residual, partial, idx = flat.detach(), [], []
    for e in levels:
        i = _nearest(residual, e, metric)
        code = e[i].float()
        residual = residual - code.detach()
        partial.append(code if not partial else partial[-1] + code)
        idx.append(i)
    sums = torch.stack(partial, -2).reshape(*x.shape[:-1], len(levels), x.shape[-1])
    xf = x.float().unsqueeze(-2)
    z_q = sums[..., -1, :].detach().to(x.dtype)
    out = ResidualQuantizeOutput(x + (z_q - x).detach(), torch.stack(idx, -1).view(*x.shape[:-1], len(levels)),
                                 (xf - sums.detach()).pow(2).mean())
    if codebook.requires_grad:
        out.codebook_loss = (xf.detach() - sums).pow(2).mean()
    return out


_SWAPS = {"quantize": quantize, "ema_statistics": ema_statistics, "quantize_with_statistics": quantize_with_statistics,
          "dual_codebook_quantize": dual_codebook_quantize, "residual_quantize": residual_quantize}


@contextlib.contextmanager
def official_ops():
    """Within: vqfast.ops' quantizer ops are the formulations above, every other op its reference."""
    saved = {name: getattr(ops, name) for name in _SWAPS}
    env = os.environ.get("VQFAST_BACKEND")
    try:
        for name, fn in _SWAPS.items():
            setattr(ops, name, fn)
        os.environ["VQFAST_BACKEND"] = "reference"
        yield
    finally:
        for name, fn in saved.items():
            setattr(ops, name, fn)
        if env is None:
            os.environ.pop("VQFAST_BACKEND", None)
        else:
            os.environ["VQFAST_BACKEND"] = env
