"""MQ-VAE's adaptive de-mask module (Huang et al., CVPR 2023, Sec. 3.3; official
`demasker_vanilla.py`), vectorized over the batch.

The kept codes [B, k, d] are scattered to their positions of the h x w grid; every
masked position gets one learned mask embedding. Then a 1x1 conv d->C, a 3x3 conv,
`layers` x [ResBlock -> direction-constrained attention] and a last ResBlock give the
full feature map [B, C, h, w] for the decoder.

Direction-constrained attention: single-head spatial self-attention whose weights,
after the softmax, are multiplied column-wise by a_j (no renormalization): key j is
heard at full strength when position j was kept (a_j = 1) and faintly when it was
masked (a_j = mask_init = 0.02 in the first layer, then a <- sqrt(a) after every layer,
so masked positions become audible as they are filled in). Scaling key column j of the
weights equals scaling value row j, so the fast path runs fused scaled-dot-product
attention on v * a and never materializes the (h*w)^2 weights; `record` asks for the
explicit weights instead (tests, inspection).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from vqfast.layout import same_format
from vqfast.models.common.conv import AttnBlock, ResBlock
from vqfast.models.common.transformer import sdpa


class DirectedAttention(AttnBlock):
    """AttnBlock whose post-softmax weights are scaled per key column.

    forward(x [B, C, h, w], scale [B, h*w], record=None) -> x + proj(attn(x));
    out_i = sum_j softmax_j(q_i . k_j / sqrt(C)) * scale_j * v_j. When `record` is a
    list, the weights [B, h*w, h*w] (after scaling) are computed explicitly and appended
    as a dict with the block input and the column scale."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor, record: list | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # [B, HW, C] each
        if record is None:
            out = sdpa(q[:, None], k[:, None], (v * scale[..., None])[:, None])[:, 0]
        else:
            weights = torch.softmax(q @ k.transpose(1, 2) * C ** -0.5, dim=-1) * scale[:, None, :]
            record.append({"input": x, "scale": scale, "weights": weights})
            out = weights @ v
        return x + self.proj(same_format(out.transpose(1, 2).reshape(B, C, H, W), x))


def column_scales(kept: torch.Tensor, layers: int, mask_init: float) -> list[torch.Tensor]:
    """kept [B, N] bool -> per-layer key scales [B, N]: 1 where kept; mask_init, then its
    square root, fourth root, ... (layer 1, 2, 3, ...) where masked."""
    a = torch.where(kept, 1.0, mask_init).float()
    scales = []
    for _ in range(layers):
        scales.append(a)
        a = a.sqrt()
    return scales


class AdaptiveDemask(nn.Module):
    """Kept codes -> full feature map.

    code_dim: d; dim: output channels C; grid: (h, w); layers: attention blocks
    (8 in the paper); mask_init: first-layer key scale of masked positions (0.02).
    forward(codes [B, k, d], positions [B, k] int64, distinct per row) -> [B, C, h, w].
    """

    def __init__(self, code_dim: int, dim: int, grid: tuple[int, int], layers: int = 8, mask_init: float = 0.02):
        super().__init__()
        if not isinstance(layers, int) or layers < 0:
            raise ValueError(f"demask_layers must be an int >= 0, got {layers!r}")
        if not 0.0 < mask_init <= 1.0:
            raise ValueError(f"mask_init must be in (0, 1], got {mask_init!r}")
        self.grid, self.mask_init = tuple(grid), float(mask_init)
        self.mask_token = nn.Parameter(torch.empty(code_dim).uniform_(-1.0 / code_dim, 1.0 / code_dim))
        self.proj = nn.Conv2d(code_dim, dim, 1)
        self.conv_in = nn.Conv2d(dim, dim, 3, padding=1)
        self.res = nn.ModuleList(ResBlock(dim, dim) for _ in range(layers))
        self.attn = nn.ModuleList(DirectedAttention(dim) for _ in range(layers))
        self.out = ResBlock(dim, dim)

    def scatter(self, codes: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [B, k, d] at positions [B, k] -> (grid [B, d, h, w] with the mask embedding at
        the other positions, kept [B, h*w] bool)."""
        B, _, d = codes.shape
        h, w = self.grid
        full = self.mask_token.to(codes.dtype).expand(B, h * w, d)
        full = full.scatter(1, positions[..., None].expand(-1, -1, d), codes)
        kept = torch.zeros(B, h * w, dtype=torch.bool, device=codes.device).scatter_(1, positions, True)
        return same_format(full.transpose(1, 2).reshape(B, d, h, w), self.conv_in.weight), kept

    def forward(self, codes: torch.Tensor, positions: torch.Tensor, record: list | None = None) -> torch.Tensor:
        z, kept = self.scatter(codes, positions)
        z = self.conv_in(self.proj(z))
        for res, attn, scale in zip(self.res, self.attn, column_scales(kept, len(self.attn), self.mask_init)):
            z = attn(res(z), scale.to(z.dtype), record)
        return self.out(z)
