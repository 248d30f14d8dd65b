"""Triton dual-codebook quantization (PUT Sec. 2-3).

One pass over the rows: a program loads BLOCK_N rows once and routes them inside
the kernel by the visible mask: visible rows take their nearest code of e, masked
rows their nearest code of e2 with the index offset by K, and the chosen code is
gathered in the same kernel. A program searches e only if one of its rows is
visible and e2 only if one is masked. The launcher hands the kernel the row order
visible-first (a stable argsort of the mask: N indices, the rows themselves never
move), so at most one program mixes both kinds and the work is one search per row
whatever the shape of the mask. Exactness and the NaN policy: see _search.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vqfast.triton_kernels._search import (argmin_codes, blocks, gather_rows, layout, load_rows, pow2_scale, row_stats,
                                           scaled_rows, store_rows)


@triton.jit
def _dual_codebook_kernel(X, VIS, ORDER, E_HI, E_LO, E_SQ, E_SRC, F_HI, F_LO, F_SQ, F_SRC, SCALE, IDX, Q, N, K, K2, D,
                          stride_xn, stride_xd, stride_e, stride_f, stride_qn,
                          IS_L2: tl.constexpr, E_SPLIT: tl.constexpr, F_SPLIT: tl.constexpr,
                          DOT_F32: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    """idx[n] = argmin over e (visible) or K + argmin over e2 (masked); Q[n] = that code.
    This program takes rows ORDER[pid * BLOCK_N : (pid + 1) * BLOCK_N]."""
    slots = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = slots < N
    rows = tl.load(ORDER + slots, mask=rmask, other=0)
    vis = tl.load(VIS + rows, mask=rmask, other=0) != 0
    xt = load_rows(X, rows, rmask, stride_xn, stride_xd, D, BLOCK_D)
    xf = xt.to(tl.float32)
    _, finite = row_stats(xf)
    xt, _, _ = scaled_rows(xt, xf, SCALE, IS_L2, DOT_F32)
    # Search a codebook only when some row of this block needs it (0 codes: no loop trips).
    k_e = tl.where(tl.max((vis & rmask).to(tl.int32), axis=0) > 0, K, 0)
    k_f = tl.where(tl.max((~vis & rmask).to(tl.int32), axis=0) > 0, K2, 0)
    _, i_e = argmin_codes(xt, E_HI, E_LO, E_SQ, k_e, stride_e, D, IS_L2, E_SPLIT, DOT_F32,
                          BLOCK_N, BLOCK_K, BLOCK_D)
    _, i_f = argmin_codes(xt, F_HI, F_LO, F_SQ, k_f, stride_f, D, IS_L2, F_SPLIT, DOT_F32,
                          BLOCK_N, BLOCK_K, BLOCK_D)
    local = tl.where(finite, tl.where(vis, i_e, i_f), 0)
    tl.store(IDX + rows, tl.where(vis, local, local + K).to(tl.int64), mask=rmask)
    q_e = gather_rows(E_SRC, local, rmask & vis, D, D, BLOCK_D)
    q_f = gather_rows(F_SRC, local, rmask & ~vis, D, D, BLOCK_D)
    store_rows(Q, tl.where(vis[:, None], q_e, q_f), rows, rmask, stride_qn, D, BLOCK_D)


def dual_codebook_quantize_triton(x: torch.Tensor, visible: torch.Tensor, e_search: torch.Tensor,
                                  e2_search: torch.Tensor, e: torch.Tensor, e2: torch.Tensor,
                                  metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, d] (any strides), visible [N] bool, e_search [K, d] / e2_search [K2, d] the fp32
    search codebooks (ops.nearest_code.search_codebook), e / e2 the caller's ->
    codes [N, d] in x's dtype, idx [N] int64 (masked rows: K + index into e2)."""
    n, d = x.shape
    idx = torch.empty(n, dtype=torch.long, device=x.device)
    q = torch.empty((n, d), dtype=x.dtype, device=x.device)
    if n == 0:
        return q, idx
    k, k2 = e_search.shape[0], e2_search.shape[0]
    # One l2 scale for x and both codebooks (a row is scaled before it is routed); none for
    # an fp16 x, as layout() (fp16 sums cannot overflow; a scaled fp16 codebook could round).
    scale = torch.ones(1, device=x.device) if x.dtype == torch.float16 else pow2_scale(x, e_search, e2_search)
    le = layout(e_search, x.dtype, metric, e.dtype, scale)
    lf = layout(e2_search, x.dtype, metric, e2.dtype, scale)
    # Gather sources already in x's dtype: the kernel then copies rows, no rounding inside.
    src_e, src_f = e.detach().to(x.dtype).contiguous(), e2.detach().to(x.dtype).contiguous()
    vis = visible.contiguous().view(torch.uint8)
    order = torch.argsort(1 - vis, stable=True)  # visible rows first, each kind in row order
    dot_f32 = le.dot_f32 or lf.dot_f32
    b = blocks(n, max(k, k2), d, 4 if dot_f32 else 2)
    _dual_codebook_kernel[(triton.cdiv(n, b.n),)](
        x, vis, order, le.hi, le.lo, le.sq, src_e, lf.hi, lf.lo, lf.sq, src_f, le.scale, idx, q, n, k, k2, d,
        x.stride(0), x.stride(1), le.hi.stride(0), lf.hi.stride(0), q.stride(0),
        IS_L2=metric == "l2", E_SPLIT=le.split, F_SPLIT=lf.split, DOT_F32=dot_f32,
        BLOCK_N=b.n, BLOCK_K=b.k, BLOCK_D=b.d, num_warps=b.warps, num_stages=b.stages)
    return q, idx
