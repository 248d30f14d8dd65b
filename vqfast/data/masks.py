"""Inpainting masks on any grid (pixels or tokens).

Convention (MaskGIT inpainting lab, Sec. 2.2-2.3): a mask is bool [n, H, W] and True marks a
MISSING position (replaced by [MASK] and generated); False marks a known position that
is kept. `pixel_to_token_mask` carries a pixel mask to the token grid: a token is missing
if any pixel of its patch is missing, so every known token sees only known pixels.

Kinds: "box" (a rectangle is missing), "outside" (everything outside a rectangle is
missing: outpainting, the perimeter), "strokes" (free-form brush strokes, random walks
of thick line segments), "half" (the left/right/top/bottom half is missing). Each is
reproducible from `generator` (see vqfast.data.seeding).

    m = make_masks("strokes", 8, 32, 32, generator=0)        # bool [8, 32, 32]
    t = pixel_to_token_mask(m, (8, 8))                       # bool [8, 8, 8]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vqfast.random import as_generator

MASK_KINDS = ("box", "outside", "strokes", "half")


def _check(n, h, w):
    for name, v, lo in (("n", n, 0), ("h", h, 1), ("w", w, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


def _boxes(n, h, w, lo, hi, g):
    """Random rectangles with sides in [lo, hi] of the grid side: bool [n, h, w]."""
    u = torch.rand(n, 4, generator=g)
    bh = (lo + (hi - lo) * u[:, 0]).mul(h).round().clamp(1, h).long()
    bw = (lo + (hi - lo) * u[:, 1]).mul(w).round().clamp(1, w).long()
    y0 = (u[:, 2] * (h - bh + 1)).long()
    x0 = (u[:, 3] * (w - bw + 1)).long()
    ys, xs = torch.arange(h), torch.arange(w)
    in_y = (ys >= y0[:, None]) & (ys < (y0 + bh)[:, None])
    in_x = (xs >= x0[:, None]) & (xs < (x0 + bw)[:, None])
    return in_y[:, :, None] & in_x[:, None, :]


def box_masks(n: int, h: int, w: int, generator=None, *, min_frac: float = 0.35, max_frac: float = 0.7) -> torch.Tensor:
    """A missing rectangle per mask, sides in [min_frac, max_frac] of the grid: bool [n, h, w]."""
    _check(n, h, w)
    return _boxes(n, h, w, min_frac, max_frac, as_generator(generator))


def outside_masks(n: int, h: int, w: int, generator=None, *, min_frac: float = 0.4, max_frac: float = 0.7) -> torch.Tensor:
    """Everything outside a kept rectangle is missing (outpainting): bool [n, h, w]."""
    _check(n, h, w)
    return ~_boxes(n, h, w, min_frac, max_frac, as_generator(generator))


def half_masks(n: int, h: int, w: int, generator=None) -> torch.Tensor:
    """The left, right, top or bottom half (chosen uniformly) is missing: bool [n, h, w]."""
    _check(n, h, w)
    side = torch.randint(4, (n,), generator=as_generator(generator))
    ys, xs = torch.arange(h)[:, None], torch.arange(w)[None, :]
    halves = torch.stack([(xs < w // 2).expand(h, w), (xs >= w - w // 2).expand(h, w),
                          (ys < h // 2).expand(h, w), (ys >= h - h // 2).expand(h, w)])
    return halves[side]


def stroke_masks(n: int, h: int, w: int, generator=None, *, max_strokes: int = 4, max_vertices: int = 8,
                 width: tuple[float, float] = (0.08, 0.2), length: tuple[float, float] = (0.15, 0.35)) -> torch.Tensor:
    """Free-form brush strokes (random walks of thick segments): bool [n, h, w].

    Each mask has min(2, max_strokes)..max_strokes strokes of 2..max_vertices vertices; segment lengths
    and brush widths are fractions of max(h, w). A pixel is missing when its centre is
    within half a brush width of a segment.
    """
    _check(n, h, w)
    g = as_generator(generator)
    side = max(h, w)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    grid = torch.stack([ys.reshape(-1), xs.reshape(-1)], -1)  # [hw, 2]
    out = torch.zeros(n, h * w, dtype=torch.bool)
    strokes = torch.randint(min(2, max_strokes), max_strokes + 1, (n,), generator=g)
    for i in range(n):
        s, v = int(strokes[i]), max_vertices
        start = torch.rand(s, 1, 2, generator=g) * torch.tensor([h, w])
        angle = torch.rand(s, 1, generator=g) * 2 * math.pi + torch.cumsum(
            (torch.rand(s, v - 1, generator=g) - 0.5) * math.pi, dim=1)
        step = (length[0] + (length[1] - length[0]) * torch.rand(s, v - 1, generator=g)) * side
        moves = torch.stack([angle.sin() * step, angle.cos() * step], -1)
        pts = torch.cat([start, start + moves.cumsum(1)], 1)  # [s, v, 2]
        keep = torch.randint(2, v + 1, (s,), generator=g)     # vertices used per stroke
        radius = 0.5 * side * (width[0] + (width[1] - width[0]) * torch.rand(s, generator=g))
        a, b = pts[:, :-1].reshape(-1, 2), pts[:, 1:].reshape(-1, 2)  # segments [s*(v-1), 2]
        used = (torch.arange(v - 1)[None] < (keep - 1)[:, None]).reshape(-1)
        ab = b - a
        t = ((grid[None] - a[:, None]) * ab[:, None]).sum(-1) / ab.pow(2).sum(-1, keepdim=True).clamp_min(1e-9)
        near = a[:, None] + t.clamp(0, 1)[..., None] * ab[:, None]
        dist = (grid[None] - near).norm(dim=-1)  # [segments, hw]
        r = radius.repeat_interleave(v - 1).clamp_min(0.5)
        hit = ((dist <= r[:, None]) & used[:, None]).any(0)
        if not hit.any():  # a stroke that left the grid at once: keep its first vertex
            y0, x0 = start[0, 0].long().clamp(0, h - 1), start[0, 0, 1].long().clamp(0, w - 1)
            hit[y0 * w + x0] = True
        out[i] = hit
    return out.view(n, h, w)


_MAKERS = {"box": box_masks, "outside": outside_masks, "strokes": stroke_masks, "half": half_masks}


def make_masks(kind: str, n: int, h: int, w: int, generator=None) -> torch.Tensor:
    """n masks of one kind ("box" | "outside" | "strokes" | "half"): bool [n, h, w], True = missing."""
    if kind not in _MAKERS:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    return _MAKERS[kind](n, h, w, generator)


def pixel_to_token_mask(mask: torch.Tensor, token_hw: tuple[int, int]) -> torch.Tensor:
    """bool [n, H, W] pixel mask -> bool [n, h, w] token mask (a token is missing if any
    pixel of its patch is); H, W must be multiples of h, w."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 3:
        raise TypeError(f"mask must be a bool tensor [n, H, W], got {getattr(mask, 'dtype', type(mask))} "
                        f"{tuple(getattr(mask, 'shape', ()))}")
    (H, W), (h, w) = mask.shape[1:], token_hw
    if H % h or W % w:
        raise ValueError(f"mask grid {H}x{W} is not a multiple of the token grid {h}x{w}")
    return F.max_pool2d(mask[:, None].float(), (H // h, W // w))[:, 0] > 0


def token_to_pixel_mask(mask: torch.Tensor, pixel_hw: tuple[int, int]) -> torch.Tensor:
    """bool [n, h, w] token mask -> bool [n, H, W] (each token covers its patch)."""
    return F.interpolate(mask[:, None].float(), size=tuple(pixel_hw), mode="nearest")[:, 0] > 0
