"""EMA codebook statistics and update in Triton (PUT supp. eq. 2).

ema_statistics: each program reads a BLOCK_N x BLOCK_D tile of x once and atomically
adds it into sums[idx] (fp32); no N x K one-hot. Atomic order is not fixed, so GPU
sums may differ in the last bits between runs (the CPU kernel is the deterministic one).
A CUDA kernel would do the same atomics: the op is bound by reading x, so Triton is enough.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ema_statistics_kernel(X, IDX, COUNTS, SUMS, N, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < N
    mask = rmask[:, None] & (cols < D)[None, :]
    k = tl.load(IDX + rows, mask=rmask, other=0)
    x = tl.load(X + rows[:, None].to(tl.int64) * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(SUMS + k[:, None] * D + cols[None, :], x, mask=mask)
    if pid_d == 0:
        tl.atomic_add(COUNTS + k, tl.full([BLOCK_N], 1.0, tl.float32), mask=rmask)


def ema_statistics_triton(x: torch.Tensor, idx: torch.Tensor, K: int, block_n: int = 64,
                          block_d: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, d] contiguous (fp32/fp16/bf16), idx [N] int64 in [0, K) -> counts [K], sums [K, d] fp32."""
    N, D = x.shape
    counts = torch.zeros(K, dtype=torch.float32, device=x.device)
    sums = torch.zeros(K, D, dtype=torch.float32, device=x.device)
    if N == 0 or D == 0:
        return counts, sums
    block_d = min(block_d, triton.next_power_of_2(D))
    grid = (triton.cdiv(N, block_n), triton.cdiv(D, block_d))
    _ema_statistics_kernel[grid](x, idx, counts, sums, N, D, BLOCK_N=block_n, BLOCK_D=block_d)
    return counts, sums


@triton.jit
def _ema_update_kernel(N, S, T, OUT, TOTAL, K, D, g, h, eps, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                       SMOOTH: tl.constexpr):
    pid_k = tl.program_id(0)
    pid_d = tl.program_id(1)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    kmask = ks < K
    mask = kmask[:, None] & (cols < D)[None, :]
    n = tl.load(N + ks, mask=kmask, other=1.0)
    if SMOOTH:  # Laplace smoothing: (n + eps) / (sum(n) + K eps) * sum(n)
        total = tl.load(TOTAL)
        n = (n + eps) / (total + K * eps) * total
    off = ks.to(tl.int64)[:, None] * D + cols[None, :]  # K * d may pass 2^31
    s = g * tl.load(S + off, mask=mask, other=0.0) + h * tl.load(T + off, mask=mask, other=0.0)
    tl.store(S + off, s, mask=mask)
    tl.store(OUT + off, s / n[:, None], mask=mask)


def ema_update_triton(cluster_size: torch.Tensor, embed_sum: torch.Tensor, counts: torch.Tensor,
                      sums: torch.Tensor, decay: float, eps: float, block_k: int = 32,
                      block_d: int = 128) -> torch.Tensor:
    """PUT eq. 2 in place on cluster_size [K], embed_sum [K, d] (fp32, contiguous); returns the codebook."""
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    total = cluster_size.sum().reshape(1)  # stays on the device: no host sync
    K, D = embed_sum.shape
    out = torch.empty_like(embed_sum)
    if D == 0:
        return out
    block_d = min(block_d, triton.next_power_of_2(D))
    grid = (triton.cdiv(K, block_k), triton.cdiv(D, block_d))
    _ema_update_kernel[grid](cluster_size, embed_sum, sums, out, total, K, D, decay, 1 - decay, eps,
                             BLOCK_K=block_k, BLOCK_D=block_d, SMOOTH=eps != 0)
    return out
