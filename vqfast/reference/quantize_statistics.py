"""Oracle for the fused search + EMA statistics ops: the composition of the two references."""
from __future__ import annotations

import torch

from vqfast.reference.ema import ema_statistics
from vqfast.reference.nearest_code import nearest_code


def nearest_code_with_statistics(x: torch.Tensor, codebook: torch.Tensor,
                                 metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, d], codebook [K, d] -> idx [N], dist [N] (nearest_code), counts [K], sums [K, d]
    (ema_statistics of x grouped by idx)."""
    idx, dist = nearest_code(x, codebook, metric)
    counts, sums = ema_statistics(x, idx, codebook.shape[0])
    return idx, dist, counts, sums
