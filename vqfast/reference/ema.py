"""Oracle for the EMA codebook update (PUT supp. eq. 2)."""
from __future__ import annotations

import torch


def ema_statistics(x: torch.Tensor, idx: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, d], idx [N] in [0, K) -> counts [K] fp32 (members per code), sums [K, d] fp32
    (sum of the member rows), accumulated in float64."""
    idx = idx.long()
    counts = torch.bincount(idx, minlength=K).float()
    sums = torch.zeros(K, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, idx, x.double())
    return counts, sums.float()


def smoothed_counts(cluster_size: torch.Tensor, eps: float) -> torch.Tensor:
    """Laplace smoothing: (n + eps) / (sum(n) + K eps) * sum(n); eps = 0 returns n itself."""
    if eps == 0:
        return cluster_size
    total = cluster_size.sum()
    return (cluster_size + eps) / (total + cluster_size.shape[0] * eps) * total


def ema_update_(cluster_size: torch.Tensor, embed_sum: torch.Tensor, counts: torch.Tensor,
                sums: torch.Tensor, decay: float, eps: float) -> torch.Tensor:
    """PUT eq. 2 in place: n = g n + (1 - g) counts; s = g s + (1 - g) sums.

    cluster_size [K], embed_sum [K, d] are updated; returns the codebook
    s / smoothed(n) [K, d]. With eps = 0 this is the paper's e = s / n exactly
    (a code whose EMA count is 0 then gets NaN/inf, as in PUT eq. 2).
    """
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    return embed_sum / smoothed_counts(cluster_size, eps)[:, None]
