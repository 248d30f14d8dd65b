"""RQ-VAE (Lee et al., CVPR 2022; Draft-and-Revise supp. A.1): a VQGAN-style
encoder/decoder (the blocks of `vqfast.models.common.conv`) around a depth-D residual
quantizer with one shared codebook, so an image becomes a code map
codes[B, h, w, D]: z ~ sum_d e(codes[..., d]).

Quantizer: `vqfast.quantizers.ResidualQuantizer` (EMA decay 0.99, Laplace smoothing,
restart of codes with EMA count < 1; commitment over the partial sums
mean_d ||z - sg(sum_{i<=d} e_{k_i})||^2, weight 0.25). Loss: MSE + 0.25 * commitment
(+ optional perceptual / adversarial terms, as every conv tokenizer's `forward`).

Presets: "tiny" (32x32 crops -> 8x8x4 codes, K = 256: CPU demo; matches the "tiny"
Contextual RQ-Transformer preset) and "paper" (256x256 -> 8x8x4, K = 16384, dim 256,
five downsamplings with two ResBlocks per level, attention at 8x8: the official
`in256-rqvae-8x8x4` layout, whose weights `python -m vqfast convert rqvae` reads).

    rq = RQVAE.from_preset("tiny")
    codes = rq.encode(torch.rand(2, 3, 32, 32) * 2 - 1)   # [2, 8, 8, 4]
    x = rq.decode_tokens(codes)                           # [2, 3, 32, 32]
"""
from __future__ import annotations

from vqfast.models.common.conv import ConvTokenizer
from vqfast.models.common.presets import PresetMixin
from vqfast.quantizers import ResidualQuantizer


class RQVAE(PresetMixin, ConvTokenizer):
    """images [B, C, R, R] in [-1, 1] <-> codes [B, R/f, R/f, D] (f = 2^(len(ch_mult)-1))."""

    PRESETS = {
        "tiny": dict(resolution=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, codebook_size=256, embed_dim=32,
                     code_depth=4),
        "paper": dict(resolution=256, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, codebook_size=16384,
                      embed_dim=256, code_depth=4, attn_resolutions=(8,)),
    }

    def __init__(self, resolution: int = 32, in_channels: int = 3, ch: int = 32, ch_mult: tuple[int, ...] = (1, 2, 2),
                 num_res_blocks: int = 1, codebook_size: int = 256, embed_dim: int = 32, code_depth: int = 4,
                 z_channels: int | None = None, attn: bool = True, attn_resolutions: tuple[int, ...] = (),
                 shared_codebook: bool = True,
                 decay: float | None = 0.99, commitment_weight: float = 0.25, threshold_dead_code: float | None = 1.0,
                 rec_loss: str = "l2", seed: int = 0):
        config = dict(resolution=resolution, in_channels=in_channels, ch=ch, ch_mult=list(ch_mult),
                      num_res_blocks=num_res_blocks, codebook_size=codebook_size, embed_dim=embed_dim,
                      code_depth=code_depth, z_channels=z_channels or embed_dim, attn=attn,
                      attn_resolutions=list(attn_resolutions),
                      shared_codebook=shared_codebook, decay=decay, commitment_weight=commitment_weight,
                      threshold_dead_code=threshold_dead_code, rec_loss=rec_loss, seed=seed)
        super().__init__(config, lambda: ResidualQuantizer(
            embed_dim, codebook_size, code_depth, shared_codebook=shared_codebook, decay=decay,
            commitment_weight=commitment_weight, threshold_dead_code=threshold_dead_code, channel_first=True,
            seed=seed))
        self.code_depth = code_depth

    @property
    def token_shape(self) -> tuple[int, ...]:
        """Shape of one image's codes: (h, w, D)."""
        return (*self.token_hw, self.code_depth)
