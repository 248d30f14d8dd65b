"""VQGAN: the taming-transformers tokenizer that MaskGIT and VQ-DDM both use (conv blocks of
`vqfast.models.common.conv`, EMA codebook of `vqfast.quantizers.VectorQuantizer`)."""
from __future__ import annotations

import torch

from vqfast.models.common.conv import ConvTokenizer
from vqfast.quantizers import VectorQuantizer


class VQGAN(ConvTokenizer):
    """images [B, C, R, R] in [-1, 1] <-> tokens [B, R/f, R/f] (f = 2^(len(ch_mult)-1)).

        vq = VQGAN.tiny()
        idx = vq.encode(torch.rand(2, 3, 32, 32) * 2 - 1)     # [2, 8, 8]
        x = vq.decode_indices(idx)                           # [2, 3, 32, 32]
    """

    def __init__(self, resolution: int = 32, in_channels: int = 3, ch: int = 32, ch_mult: tuple[int, ...] = (1, 2, 2),
                 num_res_blocks: int = 1, codebook_size: int = 256, embed_dim: int = 32, z_channels: int | None = None,
                 attn: bool = True, decay: float | None = 0.99, commitment_weight: float = 0.25,
                 threshold_dead_code: float | None = 0.5, rec_loss: str = "l1", seed: int = 0):
        config = dict(resolution=resolution, in_channels=in_channels, ch=ch, ch_mult=list(ch_mult),
                      num_res_blocks=num_res_blocks, codebook_size=codebook_size, embed_dim=embed_dim,
                      z_channels=z_channels or embed_dim, attn=attn, decay=decay, commitment_weight=commitment_weight,
                      threshold_dead_code=threshold_dead_code, rec_loss=rec_loss, seed=seed)
        super().__init__(config, lambda: VectorQuantizer(
            embed_dim, codebook_size, decay=decay, commitment_weight=commitment_weight, kmeans_init=True,
            threshold_dead_code=threshold_dead_code, channel_first=True, seed=seed))

    @classmethod
    def tiny(cls, **overrides) -> "VQGAN":
        """32x32 crops -> 8x8 tokens, 256 codes of dim 32 (~0.7M parameters): trains on a CPU in minutes."""
        return cls(**{**dict(resolution=32, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, codebook_size=256,
                             embed_dim=32), **overrides})

    @classmethod
    def seed_config(cls, **overrides) -> "VQGAN":
        """The seed lab's tokenizer size: 64x64 -> 16x16 tokens, 1024 codes of dim 256."""
        return cls(**{**dict(resolution=64, ch=128, ch_mult=(1, 1, 2), num_res_blocks=2, codebook_size=1024,
                             embed_dim=256), **overrides})

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """token indices [B, h, w] (or [B, h*w]) -> images [B, C, R, R]."""
        h, w = self.token_hw
        if indices.dtype != torch.long or indices[0].numel() != h * w:
            raise ValueError(f"indices must be int64 [B, {h}, {w}], got {indices.dtype} {tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.codebook_size})")
        return self.decode(self.quantizer.indices_to_codes(indices.reshape(-1, h, w)))
