"""RQ-VAE (Lee et al., CVPR 2022; Draft-and-Revise supp. A.1): a VQGAN-style
encoder/decoder (the blocks of `vqfast.models.vqgan`) around a depth-D residual
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
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.vqgan import Decoder, Encoder
from vqfast.quantizers import QuantizerLosses, ResidualQuantizer


class RQVAE(nn.Module):
    """images [B, C, R, R] in [-1, 1] <-> codes [B, R/f, R/f, D] (f = 2^(len(ch_mult)-1))."""

    def __init__(self, resolution: int = 32, in_channels: int = 3, ch: int = 32, ch_mult: tuple[int, ...] = (1, 2, 2),
                 num_res_blocks: int = 1, codebook_size: int = 256, embed_dim: int = 32, code_depth: int = 4,
                 z_channels: int | None = None, attn: bool = True, shared_codebook: bool = True,
                 decay: float | None = 0.99, commitment_weight: float = 0.25, threshold_dead_code: float | None = 1.0,
                 rec_loss: str = "l2", seed: int = 0):
        super().__init__()
        ch_mult = tuple(ch_mult)
        f = 2 ** (len(ch_mult) - 1)
        if resolution % f:
            raise ValueError(f"resolution={resolution} must be divisible by the downsampling factor {f}")
        if rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be 'l1' or 'l2', got {rec_loss!r}")
        z_channels = z_channels or embed_dim
        self.config = dict(resolution=resolution, in_channels=in_channels, ch=ch, ch_mult=list(ch_mult),
                           num_res_blocks=num_res_blocks, codebook_size=codebook_size, embed_dim=embed_dim,
                           code_depth=code_depth, z_channels=z_channels, attn=attn, shared_codebook=shared_codebook,
                           decay=decay, commitment_weight=commitment_weight,
                           threshold_dead_code=threshold_dead_code, rec_loss=rec_loss, seed=seed)
        self.token_hw = (resolution // f, resolution // f)
        self.code_depth, self.rec_loss = code_depth, rec_loss
        self.encoder = Encoder(in_channels, ch, ch_mult, num_res_blocks, z_channels, attn)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.quantizer = ResidualQuantizer(embed_dim, codebook_size, code_depth, shared_codebook=shared_codebook,
                                           decay=decay, commitment_weight=commitment_weight,
                                           threshold_dead_code=threshold_dead_code, channel_first=True, seed=seed)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.decoder = Decoder(in_channels, ch, ch_mult, num_res_blocks, z_channels, attn)

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

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def _check_images(self, x: torch.Tensor) -> None:
        r, c = self.config["resolution"], self.config["in_channels"]
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != c or tuple(x.shape[2:]) != (r, r):
            raise ValueError(f"images must be [B, {c}, {r}, {r}], got {tuple(getattr(x, 'shape', ()))}")

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerLosses]:
        """images -> (z_q [B, d, h, w], codes [B, h, w, D], QuantizerLosses)."""
        self._check_images(x)
        return self.quantizer(self.quant_conv(self.encoder(x)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """images [B, C, R, R] -> codes int64 [B, h, w, D]."""
        return self.quantize(x)[1]

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """quantized latents [B, d, h, w] -> images [B, C, R, R]."""
        return self.decoder(self.post_quant_conv(z_q))

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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerLosses]:
        """images -> (reconstruction, codes [B, h, w, D], QuantizerLosses)."""
        z_q, codes, qloss = self.quantize(x)
        return self.decode(z_q), codes, qloss

    def loss(self, x: torch.Tensor, perceptual: nn.Module | None = None, perceptual_weight: float = 1.0,
             adversarial=None) -> tuple[torch.Tensor, dict[str, float]]:
        """rec (MSE or L1) + quantizer terms (+ perceptual, + adversarial.generator_loss(rec)).
        Returns (loss, logs)."""
        rec, _, qloss = self(x)
        rec_term = F.mse_loss(rec, x) if self.rec_loss == "l2" else F.l1_loss(rec, x)
        total = rec_term + qloss.total
        logs = {"rec": float(rec_term.detach()), "commit": float(qloss.commitment.detach())}
        if perceptual is not None:
            p = perceptual(x, rec)
            total = total + perceptual_weight * p
            logs["perceptual"] = float(p)
        if adversarial is not None:
            a = adversarial.generator_loss(rec)
            total = total + a
            logs["adversarial"] = float(a)
        return total, logs
