"""Triton nearest-codebook search and quantize.

One program takes BLOCK_N rows, streams the codebook in tiles of BLOCK_K codes
through tl.dot (fp32 accumulation) and keeps a running argmin: the N x K distance
matrix is never formed. `quantize_triton` gathers the chosen codes in the same
kernel. Exactness and the NaN policy: see triton_kernels/_search.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vqfast.triton_kernels._search import (argmin_codes, blocks, gather_rows, layout, load_rows, pow2_scale,
                                           row_stats, scaled_rows, score_to_dist, store_rows)


@triton.jit
def _nearest_code_kernel(X, C_HI, C_LO, C_SQ, SCALE, SRC, IDX, DIST, Q, N, K, D,
                         stride_xn, stride_xd, stride_c, stride_src, stride_qn,
                         IS_L2: tl.constexpr, SPLIT: tl.constexpr, DOT_F32: tl.constexpr,
                         WRITE_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    """idx[n] = argmin_k score(x_n, c_k), dist[n] its distance; Q[n] = SRC[idx[n]] if WRITE_Q."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    xt = load_rows(X, rows, rmask, stride_xn, stride_xd, D, BLOCK_D)
    xf = xt.to(tl.float32)
    _, finite = row_stats(xf)
    xt, xs, s = scaled_rows(xt, xf, SCALE, IS_L2, DOT_F32)
    x_sq, _ = row_stats(xs)
    best, best_i = argmin_codes(xt, C_HI, C_LO, C_SQ, K, stride_c, D, IS_L2, SPLIT, DOT_F32,
                                BLOCK_N, BLOCK_K, BLOCK_D)
    best_i = tl.where(finite, best_i, 0)
    dist = score_to_dist(best, x_sq, s, IS_L2)
    if IS_L2 and not WRITE_Q:
        # From the chosen code itself: the expansion |x|^2 + (|c|^2 - 2 x.c) cancels for near
        # matches (absolute error ~ d 2^-24 |x|^2). No code searched (all NaN/inf): +inf.
        diff = xf - gather_rows(SRC, best_i, rmask, stride_src, D, BLOCK_D).to(tl.float32)
        dist = tl.where(best < float("inf"), tl.sum(diff * diff, axis=1), float("inf"))
    dist = tl.where(finite, dist, float("nan"))
    tl.store(IDX + rows, best_i.to(tl.int64), mask=rmask)
    tl.store(DIST + rows, dist, mask=rmask)
    if WRITE_Q:
        store_rows(Q, gather_rows(SRC, best_i, rmask, stride_src, D, BLOCK_D), rows, rmask, stride_qn, D, BLOCK_D)


def _launch(x: torch.Tensor, cb: torch.Tensor, metric: str, codebook: torch.Tensor, write_q: bool):
    n, d = x.shape
    idx = torch.empty(n, dtype=torch.long, device=x.device)
    dist = torch.empty(n, dtype=torch.float32, device=x.device)
    q = torch.empty((n, d) if write_q else (0, d), dtype=x.dtype, device=x.device)
    if n == 0:
        return idx, dist, q
    lay = layout(cb, x.dtype, metric, codebook.dtype, pow2_scale(x, cb) if metric == "l2" else None)
    src = codebook.detach().contiguous()
    b = blocks(n, cb.shape[0], d, 4 if lay.dot_f32 else 2)
    _nearest_code_kernel[(triton.cdiv(n, b.n),)](
        x, lay.hi, lay.lo, lay.sq, lay.scale, src, idx, dist, q, n, cb.shape[0], d,
        x.stride(0), x.stride(1), lay.hi.stride(0), src.stride(0), q.stride(0) if write_q else d,
        IS_L2=metric == "l2", SPLIT=lay.split, DOT_F32=lay.dot_f32, WRITE_Q=write_q,
        BLOCK_N=b.n, BLOCK_K=b.k, BLOCK_D=b.d, num_warps=b.warps, num_stages=b.stages)
    return idx, dist, q


def nearest_code_triton(x: torch.Tensor, cb: torch.Tensor, metric: str,
                        codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, d] (any strides; fp32/fp16/bf16), cb [K, d] the fp32 search codebook
    (ops.nearest_code.search_codebook), codebook [K, d] the caller's (its dtype tells
    whether cb is exact in x's dtype) -> idx [N] int64, dist [N] fp32."""
    idx, dist, _ = _launch(x, cb, metric, codebook, write_q=False)
    return idx, dist


def quantize_triton(x: torch.Tensor, cb: torch.Tensor, metric: str,
                    codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As nearest_code_triton, and the chosen rows of `codebook` gathered in the same
    kernel -> codes [N, d] in x's dtype, idx [N] int64."""
    idx, _, q = _launch(x, cb, metric, codebook, write_q=True)
    return q, idx
