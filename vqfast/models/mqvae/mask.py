"""MQ-VAE's adaptive mask module (Huang et al., CVPR 2023, Sec. 3.2; official
`masker_vanilla_refine.py`), vectorized over the batch.

Scoring net: LayerNorm over [C, h, w] (no affine) -> Conv3x3 C->C -> ReLU -> Conv1x1 C->1
-> BatchNorm -> Sigmoid gives one importance score s in (0, 1) per position. The top
k = round(ratio * h * w) positions by the *detached* score are kept (ties: lower raster
position first). Kept features are LayerNormed per token (no affine), multiplied by their
*non-detached* score (the only gradient path into the scoring net) and projected by a
Linear C->d without bias. The masked features are dropped here: they never reach the
quantizer.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.layout import same_format


def num_kept(ratio: float, num_positions: int) -> int:
    """k = round(ratio * num_positions), halves rounded up; ratio is the KEPT share in (0, 1]."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio (share of kept positions) must be in (0, 1], got {ratio!r}")
    k = math.floor(ratio * num_positions + 0.5)
    if k < 1:
        raise ValueError(f"ratio={ratio} keeps no position of a {num_positions}-position grid")
    return k


def select_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k highest scores per row, in raster order.

    scores [B, N] -> int64 [B, k], each row sorted ascending. Ties go to the lower
    position (a stable descending sort keeps equal scores in index order)."""
    order = torch.sort(scores.detach(), dim=1, descending=True, stable=True).indices
    return order[:, :k].sort(dim=1).values


class AdaptiveMask(nn.Module):
    """Scores every position of an encoder map and keeps the top `ratio` share.

    dim: encoder channels C; out_dim: code dim d; grid: (h, w); ratio: kept share.
    forward(x [B, C, h, w]) -> (features [B, k, d], positions [B, k] int64 ascending,
    scores [B, h, w]) where features[b, i] = Linear(LN(x[b, :, p])) * scores[b, p] for
    p = positions[b, i].
    """

    def __init__(self, dim: int, out_dim: int, grid: tuple[int, int], ratio: float):
        super().__init__()
        self.grid = tuple(grid)
        self.num_kept = num_kept(ratio, grid[0] * grid[1])
        # PyTorch's default (Kaiming-uniform) init, as supp. Sec. 1 says
        self.scorer = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, 1, 1),
                                    nn.BatchNorm2d(1), nn.Sigmoid())
        self.proj = nn.Linear(dim, out_dim, bias=False)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder map [B, C, h, w] -> importance scores [B, h, w] in (0, 1)."""
        return self.scorer(same_format(F.layer_norm(x, x.shape[1:]), x))[:, 0]  # layer_norm returns NCHW

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """positions [B, n] int64 (optional): keep these instead of the top k (ablations)."""
        C = x.shape[1]
        scores = self.score(x)
        flat = scores.flatten(1)                                           # [B, h*w]
        if positions is None:
            positions = select_top(flat, self.num_kept)                    # [B, k]
        tokens = x.flatten(2).transpose(1, 2)                              # [B, h*w, C]
        kept = tokens.gather(1, positions[..., None].expand(-1, -1, C))    # [B, k, C]
        kept = F.layer_norm(kept, (C,)) * flat.gather(1, positions)[..., None]
        return self.proj(kept), positions, scores
