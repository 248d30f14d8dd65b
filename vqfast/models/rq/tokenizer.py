"""RQ-VAE (Lee et al., CVPR 2022; Draft-and-Revise supp. A.1): a VQGAN-style
encoder/decoder (the blocks of `vqfast.models.common.conv`) around a depth-D residual
quantizer with one shared codebook, so an image becomes a code map
codes[B, h, w, D]: z ~ sum_d e(codes[..., d]).

Quantizer: `vqfast.quantizers.ResidualQuantizer` (EMA decay 0.99, Laplace smoothing,
restart of codes with EMA count < 1; commitment over the partial sums
mean_d ||z - sg(sum_{i<=d} e_{k_i})||^2, weight 0.25). Loss: MSE + 0.25 * commitment
(+ optional perceptual / adversarial terms as `VQGAN.loss`).

Configs: `RQVAE.tiny()` (32x32 crops -> 8x8x4 codes, K = 256: CPU demo; matches the
"tiny" Contextual RQ-Transformer preset) and `RQVAE.paper()` (256x256 -> 8x8x4,
K = 16384, dim 256, five downsamplings with two ResBlocks per level).

    rq = RQVAE.tiny()
    codes = rq.encode(torch.rand(2, 3, 32, 32) * 2 - 1)   # [2, 8, 8, 4]
    x = rq.decode_codes(codes)                            # [2, 3, 32, 32]
"""
from __future__ import annotations

import torch

from vqfast.models.common.conv import ConvTokenizer
from vqfast.quantizers import ResidualQuantizer


class RQVAE(ConvTokenizer):
    """images [B, C, R, R] in [-1, 1] <-> codes [B, R/f, R/f, D] (f = 2^(len(ch_mult)-1))."""

    def __init__(self, resolution: int = 32, in_channels: int = 3, ch: int = 32, ch_mult: tuple[int, ...] = (1, 2, 2),
                 num_res_blocks: int = 1, codebook_size: int = 256, embed_dim: int = 32, code_depth: int = 4,
                 z_channels: int | None = None, attn: bool = True, shared_codebook: bool = True,
                 decay: float | None = 0.99, commitment_weight: float = 0.25, threshold_dead_code: float | None = 1.0,
                 rec_loss: str = "l2", seed: int = 0):
        config = dict(resolution=resolution, in_channels=in_channels, ch=ch, ch_mult=list(ch_mult),
                      num_res_blocks=num_res_blocks, codebook_size=codebook_size, embed_dim=embed_dim,
                      code_depth=code_depth, z_channels=z_channels or embed_dim, attn=attn,
                      shared_codebook=shared_codebook, decay=decay, commitment_weight=commitment_weight,
                      threshold_dead_code=threshold_dead_code, rec_loss=rec_loss, seed=seed)
        super().__init__(config, lambda: ResidualQuantizer(
            embed_dim, codebook_size, code_depth, shared_codebook=shared_codebook, decay=decay,
            commitment_weight=commitment_weight, threshold_dead_code=threshold_dead_code, channel_first=True,
            seed=seed))
        self.code_depth = code_depth

    @classmethod
    def tiny(cls, **overrides) -> "RQVAE":
        """32x32 crops -> 8x8x4 codes, K = 256 codes of dim 32 (~1M parameters)."""
        return cls(**{**dict(resolution=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, codebook_size=256,
                             embed_dim=32, code_depth=4), **overrides})

    @classmethod
    def paper(cls, **overrides) -> "RQVAE":
        """supp. A.1: 256x256 -> 8x8x4 codes, K = 16384 shared codes of dim 256."""
        return cls(**{**dict(resolution=256, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                             codebook_size=16384, embed_dim=256, code_depth=4), **overrides})

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes int64 [B, h, w, D] -> images [B, C, R, R]."""
        h, w = self.token_hw
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.long or \
                tuple(codes.shape[1:]) != (h, w, self.code_depth):
            raise ValueError(f"codes must be int64 [B, {h}, {w}, {self.code_depth}], got "
                             f"{getattr(codes, 'dtype', type(codes))} {tuple(getattr(codes, 'shape', ()))}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        return self.decode(self.quantizer.indices_to_codes(codes))
