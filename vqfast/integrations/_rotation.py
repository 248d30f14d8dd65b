"""The rotation-trick straight-through estimator (Fifty et al. 2024, "Restructuring Vector
Quantization with the Rotation Trick", Sec. 4.2) from row reductions and one combining pass.

With u = x / |x|, v = q / |q|, w = (u + v) / |u + v| and s = |q| / |x| (all treated as
constants by autograd), the estimator is out = s (x - 2 (x.w) w + 2 (x.u) v): its value is
q (the rotation of x onto q, rescaled) and its gradient to x is s (g - 2 (g.w) w + 2 (g.v) u).
Both are linear combinations of two rows with per-row coefficients, so |x|, |q| and x.q
(g.x and g.q backward) give everything the peer builds with [N, d] temporaries and batched matmuls.
Norms are clamped at 1e-6 before dividing, as the peer's safe division and F.normalize do.
"""
from __future__ import annotations

import numpy as np
import torch

_EPS = 1e-6  # the peer's clamp on every norm it divides by


def _norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t, dim=-1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row dot products [N], reading a and b once (no [N, d] product temporary)."""
    return torch.einsum("nd,nd->n", a, b)


def _per_row(fn, *rows: torch.Tensor) -> list[torch.Tensor]:
    """fn's arithmetic on per-row values [N], as [N, 1] fp32 tensors. On the CPU in float64 NumPy:
    a few dozen tiny torch ops each wake the thread pool, which on a loaded machine costs more
    than the [N, d] passes themselves."""
    if rows[0].device.type == "cpu":
        out = fn(*(r.detach().double().numpy() for r in rows), sqrt=np.sqrt, at_least=np.maximum)
        return [torch.from_numpy(o).float().unsqueeze(1) for o in out]
    return [o.unsqueeze(1) for o in fn(*rows, sqrt=torch.sqrt, at_least=torch.clamp_min)]


def _forward_coefficients(nx, nq, xq, *, sqrt, at_least):
    """|x|, |q|, x.q -> (a, b) with out = a x + b q, and (s, cx, cq, m) for the backward."""
    cx, cq = at_least(nx, _EPS), at_least(nq, _EPS)
    u2, v2, uv = (nx / cx) ** 2, (nq / cq) ** 2, xq / (cx * cq)
    m = at_least(sqrt(at_least(u2 + 2 * uv + v2, 0.0)), _EPS)  # |u + v|, clamped as F.normalize
    s, xu, xv = nq / cx, nx * nx / cx, xq / cq
    xw = (xu + xv) / m
    return s * (1 - 2 * xw / (m * cx)), s * (2 * xu - 2 * xw / m) / cq, s, cx, cq, m


def _backward_coefficients(gx, gq, s, cx, cq, m, *, sqrt, at_least):
    """g.x, g.q -> (a, b) with grad = s g + a x + b q."""
    gw = (gx / cx + gq / cq) / m
    return s * (2 * gq / cq - 2 * gw / m) / cx, -s * 2 * gw / (m * cq)


class _RotateTo(torch.autograd.Function):
    """(x, q) [N, d] -> the rotation-trick output [N, d] in x's dtype; gradient to x only."""

    @staticmethod
    def forward(ctx, x, q):
        xf, qf = x.float(), q.detach().float()
        a, b, s, cx, cq, m = _per_row(_forward_coefficients, _norm(xf), _norm(qf), _dot(xf, qf))
        ctx.save_for_backward(xf, qf, s, cx, cq, m)
        return torch.mul(xf, a).addcmul_(qf, b).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        xf, qf, s, cx, cq, m = ctx.saved_tensors
        gf = g.float()
        a, b = _per_row(_backward_coefficients, _dot(gf, xf), _dot(gf, qf), *(t.squeeze(1) for t in (s, cx, cq, m)))
        return torch.mul(gf, s).addcmul_(xf, a).addcmul_(qf, b).to(g.dtype), None


def rotate_to(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Rotation-trick straight-through output: x, q [..., d] (same shape) -> [..., d], value q
    (up to rounding), gradient to x the rotation of the upstream gradient; none to q.

        z = rotate_to(x, codes)
    """
    if x.shape != q.shape:
        raise ValueError(f"x and q must have the same shape, got {tuple(x.shape)} and {tuple(q.shape)}")
    d = x.shape[-1]
    return _RotateTo.apply(x.reshape(-1, d), q.reshape(-1, d)).reshape(x.shape)
