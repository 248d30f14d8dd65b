"""MQ-VAE: masked vector quantization (Huang et al., "Not All Image Regions Matter",
CVPR 2023; official code CrossmodalGroup/MaskedVectorQuantization).

images [B, 3, R, R] -> VQGAN encoder -> map [B, C, h, w] -> adaptive mask
(`vqfast.models.mqvae.mask`): keep the top k = round(ratio * h * w) positions by score
-> VectorQuantizer on the k kept features only (EMA 0.99, dead-code restart) ->
adaptive de-mask (`vqfast.models.mqvae.demask`): scatter the codes back, mask embedding
elsewhere, direction-constrained attention -> VQGAN decoder -> images.

`ratio` is the KEPT share (the official `topk_ratio`); the paper's "mask ratio" is
1 - ratio (supp. Figs. 6-7: 75% masked of 32x32 = ratio 0.25, 256 codes).
By default the decoder keeps its own input conv and middle block after the de-mask module's
3x3 conv and the encoder has attention in its middle block only; `decoder_stem=False` and
`attn_resolutions=[32]` give the official f8 layout (no decoder input conv or middle block,
attention after every ResBlock at 32x32 in encoder and decoder), the layout
`vqfast.convert` loads the released weights into.

Loss (supp. Sec. 1): ||X - X~||^2 (or L1) + beta * ||Z - sg(Zq)||^2 (beta = 0.25, EMA
codebook), plus optional perceptual and adversarial terms (`vqfast.models.common.losses`)
weighted by `perceptual_weight` and `adversarial_weight`.

The paper presets ("f8", "f8_r30", "f16", "f8_official") follow the supplement's training
settings: EMA codebook without dead-code restart or k-means init, perceptual weight 1.0,
adversarial weight 0.75. The constructor's defaults (restart of codes used < 0.5 times,
k-means init, adversarial weight 1.0) are vqfast's choices for short runs, kept as options.

Presets (`MQVAE.from_preset(name)`, see `MQVAE.PRESETS`): "f8" (256px -> 32x32, ratio 0.25,
256 codes), "f8_r30" (the official config: ratio 0.30, 307 codes), "f8_official" (f8_r30 in
the official layout), "f16" (256px ->
16x16, ratio 0.5, 128 codes; supp. Table 3), all K = 1024, d = 256; "tiny" (32px ->
8x8, 32 codes, K = 256, 2 de-mask blocks) and "tiny_f8" (64px -> 8x8) for CPUs.

    vq = MQVAE.from_preset("tiny")
    tokens, positions, scores = vq.encode(torch.rand(2, 3, 32, 32) * 2 - 1)  # [2, 32], [2, 32], [2, 8, 8]
    images = vq.decode_tokens(tokens, positions)                             # [2, 3, 32, 32]
    out = vq(images)                     # TokenizerOutput(reconstruction, tokens, loss: LossOutput)
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.common.checks import check_image_dtype
from vqfast.models.common.conv import Decoder, Encoder, check_conv_config
from vqfast.models.common.outputs import TokenizerOutput, loss_output
from vqfast.models.common.presets import PresetMixin
from vqfast.models.mqvae.demask import AdaptiveDemask
from vqfast.models.mqvae.mask import AdaptiveMask, num_kept
from vqfast.quantizers import VectorQuantizer


# supp. Sec. 1: EMA codebook (no dead-code restart, no k-means init), perceptual 1.0, adversarial 0.75
_PAPER = dict(threshold_dead_code=None, kmeans_init=False, perceptual_weight=1.0, adversarial_weight=0.75)


class MQVAEEncoding(NamedTuple):
    """`MQVAE.encode`: tokens (code ids) [B, k] int64, positions [B, k] int64 ascending (raster
    order) on the h x w grid, scores [B, h, w] (the adaptive mask's importance)."""

    tokens: torch.Tensor
    positions: torch.Tensor
    scores: torch.Tensor


class MQVAE(PresetMixin, nn.Module):
    """images [B, C, R, R] in [-1, 1] <-> (tokens [B, k], positions [B, k]) on an h x w grid.

    Constructor arguments: see the module docstring (defaults: the "f8" preset); `config`
    holds them as JSON values. Attributes: grid_size (h, w), num_positions (h*w), num_kept
    (k), codebook_size, resolution.
    """

    PRESETS: dict[str, dict] = {
        "f8": dict(_PAPER),
        "f8_r30": dict(_PAPER, ratio=0.30),
        "f8_official": dict(_PAPER, ratio=0.30, attn_resolutions=[32], decoder_stem=False),
        "f16": dict(_PAPER, ch_mult=[1, 1, 2, 2, 4], ratio=0.5),
        "tiny": dict(resolution=32, ch=16, ch_mult=[1, 2, 4], num_res_blocks=1, z_channels=32, codebook_size=256,
                     embed_dim=32, ratio=0.5, demask_layers=2),
        "tiny_f8": dict(resolution=64, ch=16, ch_mult=[1, 2, 2, 4], num_res_blocks=1, z_channels=32,
                        codebook_size=256, embed_dim=32, ratio=0.5, demask_layers=2),
    }

    def __init__(self, resolution: int = 256, in_channels: int = 3, ch: int = 128,
                 ch_mult: tuple[int, ...] | list[int] = (1, 1, 2, 2), num_res_blocks: int = 2, z_channels: int = 256,
                 attn: bool = True, codebook_size: int = 1024, embed_dim: int = 256, ratio: float = 0.25,
                 demask_layers: int = 8, mask_init: float = 0.02, decay: float | None = 0.99,
                 commitment_weight: float = 0.25, threshold_dead_code: float | None = 0.5, kmeans_init: bool = True,
                 rec_loss: str = "l2", seed: int = 0, attn_resolutions: tuple[int, ...] | list[int] = (),
                 decoder_stem: bool = True, perceptual_weight: float = 1.0, adversarial_weight: float = 1.0):
        super().__init__()
        check_conv_config(ch_mult, num_res_blocks, resolution=resolution, in_channels=in_channels, ch=ch,
                          z_channels=z_channels)
        ch_mult = tuple(ch_mult)
        f = 2 ** (len(ch_mult) - 1)
        if resolution < f or resolution % f:
            raise ValueError(f"resolution={resolution} must be a positive multiple of the downsampling "
                             f"factor {f} (ch_mult={list(ch_mult)})")
        if rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be 'l1' or 'l2', got {rec_loss!r}")
        for name, w in (("perceptual_weight", perceptual_weight), ("adversarial_weight", adversarial_weight)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ValueError(f"{name} must be a non-negative number, got {w!r}")
        self.config = dict(resolution=resolution, in_channels=in_channels, ch=ch, ch_mult=list(ch_mult),
                           num_res_blocks=num_res_blocks, z_channels=z_channels, attn=attn,
                           codebook_size=codebook_size, embed_dim=embed_dim, ratio=ratio,
                           demask_layers=demask_layers, mask_init=mask_init, decay=decay,
                           commitment_weight=commitment_weight, threshold_dead_code=threshold_dead_code,
                           kmeans_init=kmeans_init, rec_loss=rec_loss, seed=seed,
                           attn_resolutions=list(attn_resolutions), decoder_stem=bool(decoder_stem),
                           perceptual_weight=float(perceptual_weight), adversarial_weight=float(adversarial_weight))
        h = resolution // f
        self.grid_size = (h, h)
        self.num_positions = h * h
        self.num_kept = num_kept(ratio, self.num_positions)
        self.resolution = resolution
        attn_res = tuple(attn_resolutions)
        self.encoder = Encoder(in_channels, ch, ch_mult, num_res_blocks, z_channels, attn, resolution, attn_res)
        self.masker = AdaptiveMask(z_channels, embed_dim, self.grid_size, ratio)
        self.quantizer = VectorQuantizer(embed_dim, codebook_size, decay=decay, commitment_weight=commitment_weight,
                                         kmeans_init=kmeans_init, threshold_dead_code=threshold_dead_code, seed=seed)
        self.demasker = AdaptiveDemask(embed_dim, z_channels, self.grid_size, demask_layers, mask_init)
        self.decoder = Decoder(in_channels, ch, ch_mult, num_res_blocks, z_channels, attn, resolution, attn_res,
                               stem=decoder_stem)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def _check_images(self, images: torch.Tensor) -> None:
        r, c = self.resolution, self.config["in_channels"]
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != c \
                or tuple(images.shape[2:]) != (r, r) or not images.is_floating_point() or images.shape[0] < 1:
            raise ValueError(f"images must be a float tensor [B >= 1, {c}, {r}, {r}], got "
                             f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
        check_image_dtype(images, next(self.encoder.parameters()))
        if images.device.type != "meta" and not bool(torch.isfinite(images).all()):
            raise ValueError("images must be finite (found NaN or inf)")

    def _check_tokens(self, tokens: torch.Tensor, positions: torch.Tensor, what: str = "tokens") -> None:
        for name, t in ((what, tokens), ("positions", positions)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.dim() != 2:
                raise ValueError(f"{name} must be an int64 tensor [B, n], got "
                                 f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if tokens.shape != positions.shape or not 1 <= tokens.shape[1] <= self.num_positions or tokens.shape[0] < 1:
            raise ValueError(f"{what} {tuple(tokens.shape)} and positions {tuple(positions.shape)} must both be "
                             f"[B, n] with B >= 1 and 1 <= n <= {self.num_positions}")
        if tokens.device.type == "meta":
            return
        if what == "tokens" and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError(f"tokens must lie in [0, {self.codebook_size})")
        if positions.min() < 0 or positions.max() >= self.num_positions:
            raise ValueError(f"positions must lie in [0, {self.num_positions})")
        s = positions.sort(dim=1).values
        if (s[:, 1:] == s[:, :-1]).any():
            raise ValueError("positions must be distinct within each row")

    def quantize(self, images: torch.Tensor, positions: torch.Tensor | None = None):
        """images -> (z_q [B, k, d], tokens [B, k], positions [B, k] ascending, scores [B, h, w],
        QuantizerLosses). Only the k kept features are quantized. positions [B, n] (optional,
        distinct per row): quantize the features there instead of at the top k (ablations:
        random masks, other kept counts)."""
        self._check_images(images)
        if positions is not None:
            self._check_tokens(positions, positions, what="positions")
            if positions.shape[0] != images.shape[0]:
                raise ValueError(f"positions has {positions.shape[0]} rows for {images.shape[0]} images")
        feats, positions, scores = self.masker(self.encoder(images), positions)
        z_q, tokens, qloss = self.quantizer(feats)
        return z_q, tokens, positions, scores, qloss

    @torch.no_grad()
    def encode(self, images: torch.Tensor, positions: torch.Tensor | None = None) -> MQVAEEncoding:
        """images [B, C, R, R] -> MQVAEEncoding(tokens [B, k] int64, positions [B, k] int64
        ascending (raster order), scores [B, h, w]). positions: as in `quantize` (returned as given)."""
        _, tokens, positions, scores, _ = self.quantize(images, positions)
        return MQVAEEncoding(tokens, positions, scores)

    def decode(self, z_q: torch.Tensor, positions: torch.Tensor, record: list | None = None) -> torch.Tensor:
        """Code vectors [B, n, d] at positions [B, n] -> images [B, C, R, R] (differentiable)."""
        # the codebook stays fp32 (EMA state) when the model is cast to bf16/fp16
        return self.decoder(self.demasker(z_q.to(self.demasker.proj.weight.dtype), positions, record))

    def decode_tokens(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens [B, n] at positions [B, n] (any order, distinct per row) -> images [B, C, R, R]."""
        self._check_tokens(tokens, positions)
        return self.decode(self.quantizer.indices_to_codes(tokens), positions)

    def demask_attention(self, tokens: torch.Tensor, positions: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The de-mask module's attention, layer by layer, for tokens [B, n]: a list of
        {"input": block input [B, C, h, w], "scale": key scale a [B, h*w], "weights": post-
        softmax weights times a, [B, h*w, h*w]} (explicit weights: small grids only)."""
        self._check_tokens(tokens, positions)
        record: list = []
        self.decode(self.quantizer.indices_to_codes(tokens), positions, record)
        return record

    def forward(self, images: torch.Tensor, *, perceptual: nn.Module | None = None,
                perceptual_weight: float | None = None, adversarial=None,
                adversarial_weight: float | None = None) -> TokenizerOutput:
        """images -> TokenizerOutput(reconstruction, tokens [B, k], loss) (supp. Sec. 1). loss.terms:
        "rec" (L2 or L1), "commit" (mean ||Z - sg(Zq)||^2 over kept tokens), "quant" (the quantizer's
        weighted loss), optional "perceptual" (perceptual(x, rec) * weight) and "adversarial"
        (adversarial.generator_loss * weight, e.g. `vqfast.models.common.losses.HingeGAN`); total =
        their sum. The weights default to the config's (paper presets: 1.0 and 0.75)."""
        if perceptual_weight is None:
            perceptual_weight = self.config["perceptual_weight"]
        if adversarial_weight is None:
            adversarial_weight = self.config["adversarial_weight"]
        z_q, tokens, positions, _, qloss = self.quantize(images)
        rec = self.decode(z_q, positions)
        rec_term = F.mse_loss(rec, images) if self.config["rec_loss"] == "l2" else F.l1_loss(rec, images)
        terms = {"rec": rec_term, "commit": qloss.commitment, "quant": qloss.total}
        total = rec_term + qloss.total
        if perceptual is not None:
            terms["perceptual"] = perceptual_weight * perceptual(images, rec)
            total = total + terms["perceptual"]
        if adversarial is not None:
            terms["adversarial"] = adversarial_weight * adversarial.generator_loss(rec)
            total = total + terms["adversarial"]
        return TokenizerOutput(rec, tokens, loss_output(total, **terms))

    @torch.no_grad()
    def importance_map_png(self, images: torch.Tensor, path) -> None:
        """PNG of input | score heat map (red high, blue low) | kept regions | reconstruction,
        one row per image (supp. Figs. 5-7). Runs in eval mode (no codebook or batch-norm update)."""
        from vqfast.models.mqvae.viz import save_importance_maps

        was_training = self.training
        self.eval()
        tokens, positions, scores = self.encode(images)
        save_importance_maps(images, scores, positions, self.decode_tokens(tokens, positions), path)
        self.train(was_training)
