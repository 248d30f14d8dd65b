"""VQGAN: the taming-transformers tokenizer that MaskGIT and VQ-DDM both use (conv blocks of
`vqfast.models.common.conv`, EMA codebook of `vqfast.quantizers.VectorQuantizer`)."""
from __future__ import annotations

from vqfast.models.common.conv import ConvTokenizer
from vqfast.models.common.presets import PresetMixin
from vqfast.quantizers import VectorQuantizer


class VQGAN(PresetMixin, ConvTokenizer):
    """images [B, C, R, R] in [-1, 1] <-> tokens [B, R/f, R/f] (f = 2^(len(ch_mult)-1)).

        vq = VQGAN.from_preset("tiny")
        idx = vq.encode(torch.rand(2, 3, 32, 32) * 2 - 1)     # [2, 8, 8]
        x = vq.decode_tokens(idx)                            # [2, 3, 32, 32]

    Presets: "tiny" (32x32 crops -> 8x8 tokens, 256 codes of dim 32, ~0.7M parameters: trains
    on a CPU in minutes), "64px" (64x64 -> 16x16 tokens, 1024 codes of dim 256: the size of
    MaskGIT's inpainting lab), and the released taming-transformers ImageNet VQGANs
    "taming-f16-1024" / "taming-f16-16384" (256x256 -> 16x16 tokens, attention at 16x16,
    codebook learned by gradient; `python -m vqfast convert taming-vqgan` reads their weights).
    """

    PRESETS = {
        "tiny": dict(resolution=32, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, codebook_size=256, embed_dim=32),
        "64px": dict(resolution=64, ch=128, ch_mult=(1, 1, 2), num_res_blocks=2, codebook_size=1024, embed_dim=256),
        **{f"taming-f16-{k}": dict(resolution=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, codebook_size=k,
                                    embed_dim=256, z_channels=256, attn_resolutions=(16,), decay=None,
                                    threshold_dead_code=None, kmeans_init=False) for k in (1024, 16384)},
    }

    def __init__(self, resolution: int = 32, in_channels: int = 3, ch: int = 32, ch_mult: tuple[int, ...] = (1, 2, 2),
                 num_res_blocks: int = 1, codebook_size: int = 256, embed_dim: int = 32, z_channels: int | None = None,
                 attn: bool = True, attn_resolutions: tuple[int, ...] = (), decay: float | None = 0.99,
                 commitment_weight: float = 0.25, threshold_dead_code: float | None = 0.5, kmeans_init: bool = True,
                 rec_loss: str = "l1", seed: int = 0):
        config = dict(resolution=resolution, in_channels=in_channels, ch=ch, ch_mult=list(ch_mult),
                      num_res_blocks=num_res_blocks, codebook_size=codebook_size, embed_dim=embed_dim,
                      z_channels=z_channels or embed_dim, attn=attn, attn_resolutions=list(attn_resolutions), decay=decay,
                      commitment_weight=commitment_weight, threshold_dead_code=threshold_dead_code,
                      kmeans_init=kmeans_init, rec_loss=rec_loss, seed=seed)
        super().__init__(config, lambda: VectorQuantizer(
            embed_dim, codebook_size, decay=decay, commitment_weight=commitment_weight, kmeans_init=kmeans_init,
            threshold_dead_code=threshold_dead_code, channel_first=True, seed=seed))
