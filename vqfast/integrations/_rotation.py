"""The rotation-trick straight-through estimator (Fifty et al. 2024, "Restructuring Vector
Quantization with the Rotation Trick", Sec. 4.2) in two passes over the rows.

With u = x / |x|, v = q / |q|, w = (u + v) / |u + v| and s = |q| / |x| (all treated as
constants by autograd), the estimator is out = s (x - 2 (x.w) w + 2 (x.u) v): its value is
q (the rotation of x onto q, rescaled) and its gradient to x is s (g - 2 (g.w) w + 2 (g.v) u).
Both are linear combinations of two rows with per-row coefficients, so three row dot
products give everything the peer builds with five [N, d] temporaries and batched matmuls.
Norms are clamped at 1e-6 before dividing, as the peer's safe division and F.normalize do.
"""
from __future__ import annotations

import torch

_EPS = 1e-6  # the peer's clamp on every norm it divides by


def _norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t, dim=-1, keepdim=True)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row dot products [N, 1], reading a and b once (no [N, d] product temporary)."""
    return torch.einsum("nd,nd->n", a, b).unsqueeze(1)


def _coefficients(x: torch.Tensor, q: torch.Tensor):
    """x, q [N, d] fp32 -> (s, cx, cq, m, xu, xw) per row [N, 1]: the scale, clamped norms of x, q
    and u + v, and the dots x.u, x.w."""
    nx, nq, xq = _norm(x), _norm(q), _dot(x, q)
    nx2, nq2 = nx.square(), nq.square()
    cx, cq = nx.clamp_min(_EPS), nq.clamp_min(_EPS)
    m = (nx2 / cx.square() + 2 * xq / (cx * cq) + nq2 / cq.square()).clamp_min(0).sqrt().clamp_min(_EPS)
    xu = nx2 / cx
    xw = (xu + xq / cq) / m
    return nq / cx, cx, cq, m, xu, xw


class _RotateTo(torch.autograd.Function):
    """(x, q) [N, d] -> the rotation-trick output [N, d] in x's dtype; gradient to x only."""

    @staticmethod
    def forward(ctx, x, q):
        xf, qf = x.float(), q.detach().float()
        s, cx, cq, m, xu, xw = _coefficients(xf, qf)
        ctx.save_for_backward(xf, qf, s, cx, cq, m)
        out = torch.mul(xf, s * (1 - 2 * xw / (m * cx)))
        return out.addcmul_(qf, s * (2 * xu - 2 * xw / m) / cq).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        xf, qf, s, cx, cq, m = ctx.saved_tensors
        gf = g.float()
        gx, gq = _dot(gf, xf), _dot(gf, qf)
        gw = (gx / cx + gq / cq) / m
        grad = torch.mul(gf, s).addcmul_(xf, s * (2 * gq / cq - 2 * gw / m) / cx)
        return grad.addcmul_(qf, -s * 2 * gw / (m * cq)).to(g.dtype), None


def rotate_to(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Rotation-trick straight-through output: x, q [..., d] (same shape) -> [..., d], value q
    (up to rounding), gradient to x the rotation of the upstream gradient; none to q.

        z = rotate_to(x, codes)
    """
    if x.shape != q.shape:
        raise ValueError(f"x and q must have the same shape, got {tuple(x.shape)} and {tuple(q.shape)}")
    d = x.shape[-1]
    return _RotateTo.apply(x.reshape(-1, d), q.reshape(-1, d)).reshape(x.shape)
