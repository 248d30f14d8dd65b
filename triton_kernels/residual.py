"""Triton residual quantization (RQ-VAE).

r_0 = x, k_i = argmin_k ||r_{i-1} - c_k|| (or the cosine score), r_i = r_{i-1} - c_{k_i};
z_q = c_{k_1} + ... + c_{k_D} summed in fp32 in level order. One program keeps the
fp32 residual and the running sum of BLOCK_N rows on chip through all D levels; only
the indices and z_q are written. The residual is fp32 after the first level, so every
dot runs in fp32 (input_precision="ieee"): exact in the sense of _search.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vqfast.triton_kernels._search import (argmin_codes, blocks, gather_rows, layout, load_rows, pow2_scale, row_stats,
                                           scaled_rows, store_rows)


@triton.jit
def _residual_kernel(X, C, C_SQ, SCALE, SRC, IDX, Q, N, K, D, DEPTH,
                     stride_xn, stride_xd, stride_cl, stride_sql, stride_c, stride_qn,
                     IS_L2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """IDX[n, i] = k_i for rows n of this block; Q[n] = sum_i SRC[level i][k_i].
    Level i reads C + i * stride_cl (stride_cl = 0: one codebook shared by all levels)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    r = load_rows(X, rows, rmask, stride_xn, stride_xd, D, BLOCK_D).to(tl.float32)
    total = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for level in range(0, DEPTH):
        _, finite = row_stats(r)
        rs, _, _ = scaled_rows(r, r, SCALE, IS_L2, True)  # the search sees r times a power of two
        _, k = argmin_codes(rs, C + level * stride_cl, C, C_SQ + level * stride_sql, K, stride_c, D,
                            IS_L2, False, True, BLOCK_N, BLOCK_K, BLOCK_D)
        k = tl.where(finite, k, 0)
        tl.store(IDX + rows.to(tl.int64) * DEPTH + level, k.to(tl.int64), mask=rmask)
        c = gather_rows(SRC + level * stride_cl, k, rmask, stride_c, D, BLOCK_D)
        r -= c
        total += c
    store_rows(Q, total, rows, rmask, stride_qn, D, BLOCK_D)


def residual_quantize_triton(x: torch.Tensor, cb: torch.Tensor, codebook: torch.Tensor, depth: int,
                             metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, d] (any strides), cb the fp32 search codebook(s) [K, d] (shared) or [depth, K, d]
    (ops.nearest_code.search_codebook per level), codebook the caller's, same shape ->
    z_q [N, d] in x's dtype, idx [N, depth] int64."""
    n, d = x.shape
    idx = torch.empty((n, depth), dtype=torch.long, device=x.device)
    q = torch.empty((n, d), dtype=x.dtype, device=x.device)
    if n == 0:
        return q, idx
    shared = cb.dim() == 2
    levels = cb.reshape(-1, *cb.shape[-2:])
    k = levels.shape[1]
    flat = levels.reshape(-1, d)
    lay = layout(flat, torch.float32, metric, torch.float32,  # fp32 residual: fp32 dots
                 pow2_scale(x, flat) if metric == "l2" else None)
    src = codebook.detach().float().reshape(-1, d).contiguous()  # codes are added in fp32
    b = blocks(n, k, d, 4)
    _residual_kernel[(triton.cdiv(n, b.n),)](
        x, lay.hi, lay.sq, lay.scale, src, idx, q, n, k, d, depth,
        x.stride(0), x.stride(1), 0 if shared else k * d, 0 if shared else k, d, q.stride(0),
        IS_L2=metric == "l2", BLOCK_N=b.n, BLOCK_K=b.k, BLOCK_D=b.d, num_warps=b.warps, num_stages=b.stages)
    return q, idx
