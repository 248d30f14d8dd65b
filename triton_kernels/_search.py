"""Pieces shared by the Triton search kernels: the tiled running argmin over a
codebook, row statistics, and how a launcher lays out the codebook for tl.dot.

Exactness (the index semantics of vqfast.reference.nearest_code, ties -> lowest index):
- fp32 x: tl.dot with input_precision="ieee" (no TF32), fp32 accumulation.
- fp16/bf16 x: tl.dot on the half operands with fp32 accumulation. A product of two
  halves is exact in fp32, so this is the fp32 dot of the upcast values up to the
  order of the sums. The codebook must then be a half too: when the fp32 search
  codebook is exactly a half (l2 with a codebook in x's dtype) it is used as is;
  otherwise (cosine, whose codes are normalized in fp32, or a bf16 x with a codebook
  of another dtype) it is split into hi + lo halves, dot(x, hi) + dot(x, lo), which
  keeps 16 of its 24 mantissa bits (relative error < 2^-16). An fp16 x with a
  codebook of another dtype (whose codes may not fit fp16's range) runs in fp32.
- Under TRITON_INTERPRET=1 every operand is upcast after loading (the interpreter's
  bf16 arithmetic is wrong) and dots are summed in fp64 (see _dot); the hi/lo
  layout is kept, so the same kernels run, only the dot's input type differs.
Scores are c_sq - 2 x.c (l2) or -x.c (cosine, codes pre-normalized); a NaN score
never wins. So that squares and dots neither overflow nor underflow fp32 whatever the
magnitudes, x and the codes are multiplied by a power of two (exact, so the indices do
not change where nothing overflowed): for l2 one scale for x and every code, from the
codebook's largest element (`pow2_scale`); for cosine, whose argmax does not depend on
|x|, a scale per row from that row's largest element (`row_scale`). Distances are
computed from the scaled values and scaled back; a row of x that is not finite gets idx 0 and dist NaN. So indices equal
the float64 reference wherever its best and second-best distances differ by more
than the fp32 rounding of the scores (about d * 2^-24 * |x| |c|), and bit-equal codes
always tie to the lowest index (each score is computed the same way for every code).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DOT_F64 = tl.constexpr(INTERPRET)  # read inside @triton.jit, so a constexpr


@triton.jit
def load_rows(X, rows, row_mask, stride_n, stride_d, D, BLOCK_D: tl.constexpr):
    """Rows `rows` of X [N, D] -> tile [BLOCK_N, BLOCK_D] in X's dtype (zero padded)."""
    dcol = tl.arange(0, BLOCK_D)
    ptr = X + rows.to(tl.int64)[:, None] * stride_n + dcol[None, :] * stride_d
    return tl.load(ptr, mask=row_mask[:, None] & (dcol[None, :] < D), other=0.0)


@triton.jit
def pow2_of(m):
    """m >= 0 (fp32) -> 2^(127 - e) with e m's biased exponent, clamped to [2^-126, 2^127]:
    m times it lies in [1, 4) for normal m (m = 0 or denormal: below 1). Built from bits: exact."""
    e = (m.to(tl.int32, bitcast=True) >> 23) & 255
    return (tl.minimum(tl.maximum(254 - e, 1), 254) << 23).to(tl.float32, bitcast=True)


@triton.jit
def row_scale(xf):
    """fp32 tile [BLOCK_N, BLOCK_D] -> per-row power of two that brings the row's largest |x| to [1, 4)."""
    return pow2_of(tl.max(tl.abs(xf), axis=1))


@triton.jit
def scaled_rows(xt, xf, SCALE, IS_L2: tl.constexpr, DOT_F32: tl.constexpr):
    """x tile (its dtype) and the same in fp32 -> (the dot operand, fp32 scaled rows, scale [BLOCK_N]):
    l2 rows times the codebook's scale SCALE[0], cosine rows times their own row_scale."""
    if IS_L2:
        s = tl.load(SCALE + tl.zeros([xf.shape[0]], tl.int32))
    else:
        s = row_scale(xf)
    xs = xf * s[:, None]
    xd = xs.to(xt.dtype)
    if DOT_F32:
        xd = xs
    return xd, xs, s


@triton.jit
def row_stats(xf):
    """fp32 tile [BLOCK_N, BLOCK_D] -> (||x||^2 [BLOCK_N], all-finite flag [BLOCK_N])."""
    n_bad = tl.sum(tl.where(tl.abs(xf) < float("inf"), 0, 1), axis=1)  # NaN fails the test too
    return tl.sum(xf * xf, axis=1), n_bad == 0


@triton.jit
def _dot(a, b):
    """a [M, D] @ b [D, K] with fp32 accumulation (no TF32). The interpreter's tl.dot is a
    BLAS GEMM whose rounding depends on the column, which would break exact ties
    between equal codes; there the sums run in fp64 and round once to fp32."""
    if _DOT_F64:
        return tl.dot(a.to(tl.float64), b.to(tl.float64), out_dtype=tl.float64).to(tl.float32)
    return tl.dot(a, b, input_precision="ieee", out_dtype=tl.float32)


@triton.jit
def argmin_codes(xt, C_HI, C_LO, C_SQ, K, stride_c, D,
                 IS_L2: tl.constexpr, SPLIT: tl.constexpr, DOT_F32: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Running argmin of xt [BLOCK_N, BLOCK_D] over codes 0..K of C_HI (+ C_LO) [K, D].

    Returns (best score [BLOCK_N] fp32, its code index [BLOCK_N] int32); a row whose
    every score is +inf or NaN keeps index 0. K may be 0 (nothing searched).
    """
    dcol = tl.arange(0, BLOCK_D)
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_i = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        kmask = codes < K
        offs = codes.to(tl.int64)[None, :] * stride_c + dcol[:, None]
        cmask = kmask[None, :] & (dcol[:, None] < D)
        ct = tl.load(C_HI + offs, mask=cmask, other=0.0)  # [BLOCK_D, BLOCK_K]
        if DOT_F32:
            ct = ct.to(tl.float32)
        dots = _dot(xt, ct)
        if SPLIT:
            cl = tl.load(C_LO + offs, mask=cmask, other=0.0)
            if DOT_F32:
                cl = cl.to(tl.float32)
            dots += _dot(xt, cl)
        if IS_L2:
            c_sq = tl.load(C_SQ + codes, mask=kmask, other=0.0)
            s = c_sq[None, :] - 2.0 * dots
        else:
            s = -dots
        s = tl.where(kmask[None, :] & (s == s), s, float("inf"))
        m, i = tl.min(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
        take = m < best  # strict: a tie with an earlier tile keeps the lower index
        best = tl.where(take, m, best)
        best_i = tl.where(take, i + k0, best_i)
    return best, best_i


@triton.jit
def score_to_dist(best, x_sq, s, IS_L2: tl.constexpr):
    """Best score of rows scaled by s -> distance of the unscaled rows: ||x - c||^2 (clamped
    at 0) or 1 - <x, c> / max(|x|, 1e-12) (the reference's normalization)."""
    if IS_L2:
        return tl.div_rn(tl.div_rn(tl.maximum(x_sq + best, 0.0), s), s)
    return 1.0 + tl.div_rn(best, tl.maximum(tl.sqrt_rn(x_sq), 1e-12 * s))


@triton.jit
def gather_rows(SRC, idx, row_mask, stride_src, D, BLOCK_D: tl.constexpr):
    """Rows idx [BLOCK_N] of SRC [K, D] -> tile [BLOCK_N, BLOCK_D] in SRC's dtype."""
    dcol = tl.arange(0, BLOCK_D)
    ptr = SRC + idx.to(tl.int64)[:, None] * stride_src + dcol[None, :]
    return tl.load(ptr, mask=row_mask[:, None] & (dcol[None, :] < D), other=0.0)


@triton.jit
def fp32_to_bf16(f):
    """Round-to-nearest-even fp32 -> bf16 in integer ops: the interpreter's own cast
    truncates; on a GPU this gives the same bits as the hardware conversion."""
    u = f.to(tl.uint32, bitcast=True)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(f == f, r, float("nan"))


@triton.jit
def store_rows(DST, tile, rows, row_mask, stride_n, D, BLOCK_D: tl.constexpr):
    """tile [BLOCK_N, BLOCK_D] -> rows `rows` of DST [N, D], cast to DST's dtype."""
    dcol = tl.arange(0, BLOCK_D)
    ptr = DST + rows.to(tl.int64)[:, None] * stride_n + dcol[None, :]
    if DST.dtype.element_ty == tl.bfloat16 and tile.dtype != tl.bfloat16:
        out = fp32_to_bf16(tile.to(tl.float32))
    else:
        out = tile.to(DST.dtype.element_ty)
    tl.store(ptr, out, mask=row_mask[:, None] & (dcol[None, :] < D))


class SearchCodebook(NamedTuple):
    """A codebook laid out for argmin_codes: hi (+ lo) parts, squared norms, flags, and the
    power of two its codes (and, for l2, the rows of x) are multiplied by."""

    hi: torch.Tensor
    lo: torch.Tensor  # == hi when not split (never read then)
    sq: torch.Tensor
    split: bool
    dot_f32: bool
    scale: torch.Tensor  # [1] fp32; 1 for cosine (rows are scaled one by one in the kernel)


def pow2_scale(x: torch.Tensor, *codebooks: torch.Tensor) -> torch.Tensor:
    """x [N, d], codebooks [..., d] fp32 -> [1] fp32 power of two that brings the largest finite
    |element| of them all to [1, 4), so no square or dot of the scaled values overflows (and
    none underflows that matters next to the largest). If x holds inf/NaN its largest finite
    element is unknown (one min/max pass, no temporaries): the scale then only shrinks.
    On the device, without a sync; exact as in pow2_of."""
    m = torch.stack([torch.where(torch.isfinite(c), c.abs(), 0.0).amax() for c in codebooks]).amax().float()
    lo, hi = torch.aminmax(x) if x.numel() else (x.new_zeros(()), x.new_zeros(()))
    mx = torch.maximum(lo.float().abs(), hi.float().abs())
    x_finite = torch.isfinite(mx)
    m = torch.maximum(m, torch.where(x_finite, mx, 0.0)).reshape(1)
    e = (m.view(torch.int32) >> 23) & 255
    field = torch.where(x_finite, 254 - e, (254 - e).clamp(max=127))  # 127: a scale of 1
    return (field.clamp(1, 254) << 23).view(torch.float32)


def layout(cb: torch.Tensor, x_dtype: torch.dtype, metric: str, source_dtype: torch.dtype,
           scale: torch.Tensor | None = None) -> SearchCodebook:
    """cb [K, d] fp32 (normalized for cosine, as ops.nearest_code.search_codebook gives);
    scale: the l2 power of two for x and the codes (pow2_scale; default 1)."""
    fp32_dots = x_dtype == torch.float32 or (x_dtype == torch.float16 and metric == "l2" and source_dtype != x_dtype)
    if scale is None or metric == "cosine" or (x_dtype == torch.float16 and not fp32_dots):
        scale = torch.ones(1, device=cb.device)  # fp16 codes and rows cannot overflow fp32 sums; scaling could round
    cb = (cb * scale).contiguous()  # the kernels assume unit stride along d
    sq = cb.square().sum(1).contiguous()
    if fp32_dots:
        return SearchCodebook(cb, cb, sq, False, True, scale)
    hi = cb.to(x_dtype)
    if metric == "l2" and source_dtype == x_dtype:  # the fp32 codes came from x's dtype: exact
        return SearchCodebook(hi, hi, sq, False, INTERPRET, scale)
    lo = (cb - hi.float()).to(x_dtype)
    return SearchCodebook(hi, lo, sq, True, INTERPRET, scale)


class Blocks(NamedTuple):
    n: int
    k: int
    d: int
    warps: int
    stages: int


def blocks(n_rows: int, n_codes: int, d: int, dot_bytes: int) -> Blocks:
    """Tile sizes: the whole (padded) row in one tile; big tiles under the interpreter,
    where each program instance costs about a millisecond whatever its size.

    On a GPU a codebook tile [BLOCK_D, BLOCK_K] of the dot's input type (dot_bytes per
    element) is kept within 32 KiB per pipeline stage, so up to d = 512 the kernels fit
    the ~100 KiB of shared memory of consumer GPUs; larger d needs A100/H100-class memory.
    """
    block_d = max(16, triton.next_power_of_2(d))
    if INTERPRET:
        return Blocks(max(16, min(256, triton.next_power_of_2(max(n_rows, 1)))),
                      max(16, min(512, triton.next_power_of_2(n_codes))), block_d, 4, 1)
    if dot_bytes == 2:  # half dots: 64 rows lets Hopper use its 64-row wgmma tiles
        block_n = 64 if block_d <= 256 else 32 if block_d <= 512 else 16
    else:
        block_n = 64 if block_d <= 128 else 32 if block_d <= 512 else 16
    block_k = max(16, min(64, (32 * 1024) // (block_d * dot_bytes)))
    return Blocks(block_n, block_k, block_d, 4 if block_d <= 128 else 8, 2)
