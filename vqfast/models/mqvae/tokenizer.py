"""MQ-VAE: masked vector quantization (Huang et al., "Not All Image Regions Matter",
CVPR 2023; official code CrossmodalGroup/MaskedVectorQuantization).

images [B, 3, R, R] -> VQGAN encoder -> map [B, C, h, w] -> adaptive mask
(`vqfast.models.mqvae.mask`): keep the top k = round(ratio * h * w) positions by score
-> VectorQuantizer on the k kept features only (EMA 0.99, dead-code restart) ->
adaptive de-mask (`vqfast.models.mqvae.demask`): scatter the codes back, mask embedding
elsewhere, direction-constrained attention -> VQGAN decoder -> images.

`ratio` is the KEPT share (the official `topk_ratio`); the paper's "mask ratio" is
1 - ratio (supp. Figs. 6-7: 75% masked of 32x32 = ratio 0.25, 256 codes).
The decoder keeps its own input conv after the de-mask module's 3x3 conv (the official
decoder drops it); the encoder has attention in its middle block only.

Loss (supp. Sec. 1): ||X - X~||^2 (or L1) + beta * ||Z - sg(Zq)||^2 (beta = 0.25, EMA
codebook), plus optional perceptual and adversarial terms (`vqfast.models.common.losses`).

Presets (`MQVAE.from_preset(name)`, see `PRESETS`): "f8" (256px -> 32x32, ratio 0.25,
256 codes), "f8_r30" (the official config: ratio 0.30, 307 codes), "f16" (256px ->
16x16, ratio 0.5, 128 codes; supp. Table 3), all K = 1024, d = 256; "tiny" (32px ->
8x8, 32 codes, K = 256, 2 de-mask blocks) and "tiny_f8" (64px -> 8x8) for CPUs.

    vq = MQVAE.from_preset("tiny")
    codes, positions, scores = vq.encode(torch.rand(2, 3, 32, 32) * 2 - 1)   # [2, 32], [2, 32], [2, 8, 8]
    images = vq.decode_tokens(codes, positions)                              # [2, 3, 32, 32]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.mqvae.demask import AdaptiveDemask
from vqfast.models.mqvae.mask import AdaptiveMask, num_kept
from vqfast.models.common.conv import Decoder, Encoder
from vqfast.quantizers import VectorQuantizer


@dataclass(frozen=True)
class MQVAEConfig:
    """Constructor arguments of MQVAE (JSON values; see the module docstring)."""

    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 2
    z_channels: int = 256
    attn: bool = True
    codebook_size: int = 1024
    embed_dim: int = 256
    ratio: float = 0.25
    demask_layers: int = 8
    mask_init: float = 0.02
    decay: float | None = 0.99
    commitment_weight: float = 0.25
    threshold_dead_code: float | None = 0.5
    kmeans_init: bool = True
    rec_loss: str = "l2"
    seed: int = 0


PRESETS: dict[str, dict] = {
    "f8": dict(),
    "f8_r30": dict(ratio=0.30),
    "f16": dict(ch_mult=(1, 1, 2, 2, 4), ratio=0.5),
    "tiny": dict(resolution=32, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=32, codebook_size=256,
                 embed_dim=32, ratio=0.5, demask_layers=2),
    "tiny_f8": dict(resolution=64, ch=16, ch_mult=(1, 2, 2, 4), num_res_blocks=1, z_channels=32,
                    codebook_size=256, embed_dim=32, ratio=0.5, demask_layers=2),
}


class MQVAE(nn.Module):
    """images [B, C, R, R] in [-1, 1] <-> (codes [B, k], positions [B, k]) on an h x w grid.

    MQVAE(config=None, **fields): fields override `config` (default: the "f8" preset).
    Attributes: grid_size (h, w), num_positions (h*w), num_kept (k), codebook_size,
    resolution, cfg (MQVAEConfig), config (its dict, for `vqfast.checkpoint`).
    """

    def __init__(self, config: MQVAEConfig | None = None, **fields):
        super().__init__()
        names = {f.name for f in dataclasses.fields(MQVAEConfig)}
        unknown = set(fields) - names
        if unknown:
            raise TypeError(f"unknown MQVAE config fields {sorted(unknown)}; known: {sorted(names)}")
        if "ch_mult" in fields:
            fields["ch_mult"] = tuple(fields["ch_mult"])
        cfg = dataclasses.replace(config or MQVAEConfig(), **fields)
        f = 2 ** (len(cfg.ch_mult) - 1)
        if cfg.resolution < f or cfg.resolution % f:
            raise ValueError(f"resolution={cfg.resolution} must be a positive multiple of the downsampling "
                             f"factor {f} (ch_mult={list(cfg.ch_mult)})")
        if cfg.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {cfg.in_channels}")
        if cfg.rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be 'l1' or 'l2', got {cfg.rec_loss!r}")
        self.cfg = cfg
        self.config = {**dataclasses.asdict(cfg), "ch_mult": list(cfg.ch_mult)}
        h = cfg.resolution // f
        self.grid_size = (h, h)
        self.num_positions = h * h
        self.num_kept = num_kept(cfg.ratio, self.num_positions)
        self.resolution = cfg.resolution
        self.encoder = Encoder(cfg.in_channels, cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.attn)
        self.masker = AdaptiveMask(cfg.z_channels, cfg.embed_dim, self.grid_size, cfg.ratio)
        self.quantizer = VectorQuantizer(cfg.embed_dim, cfg.codebook_size, decay=cfg.decay,
                                         commitment_weight=cfg.commitment_weight, kmeans_init=cfg.kmeans_init,
                                         threshold_dead_code=cfg.threshold_dead_code, seed=cfg.seed)
        self.demasker = AdaptiveDemask(cfg.embed_dim, cfg.z_channels, self.grid_size, cfg.demask_layers,
                                       cfg.mask_init)
        self.decoder = Decoder(cfg.in_channels, cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.attn)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> MQVAE:
        """A named configuration (`PRESETS`), with field overrides (e.g. ratio=0.5)."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def _check_images(self, images: torch.Tensor) -> None:
        r, c = self.resolution, self.cfg.in_channels
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != c \
                or tuple(images.shape[2:]) != (r, r) or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor [B, {c}, {r}, {r}], got "
                             f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")

    def _check_tokens(self, codes: torch.Tensor, positions: torch.Tensor, what: str = "codes") -> None:
        for name, t in ((what, codes), ("positions", positions)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.dim() != 2:
                raise ValueError(f"{name} must be an int64 tensor [B, n], got "
                                 f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if codes.shape != positions.shape or not 1 <= codes.shape[1] <= self.num_positions:
            raise ValueError(f"codes {tuple(codes.shape)} and positions {tuple(positions.shape)} must both be "
                             f"[B, n] with 1 <= n <= {self.num_positions}")
        if codes.device.type == "meta":
            return
        if what == "codes" and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        if positions.min() < 0 or positions.max() >= self.num_positions:
            raise ValueError(f"positions must lie in [0, {self.num_positions})")
        s = positions.sort(dim=1).values
        if (s[:, 1:] == s[:, :-1]).any():
            raise ValueError("positions must be distinct within each row")

    def quantize(self, images: torch.Tensor, positions: torch.Tensor | None = None):
        """images -> (z_q [B, k, d], codes [B, k], positions [B, k] ascending, scores [B, h, w],
        QuantizerLosses). Only the k kept features are quantized. positions [B, n] (optional,
        distinct per row): quantize the features there instead of at the top k (ablations:
        random masks, other kept counts)."""
        self._check_images(images)
        if positions is not None:
            self._check_tokens(positions, positions, what="positions")
            if positions.shape[0] != images.shape[0]:
                raise ValueError(f"positions has {positions.shape[0]} rows for {images.shape[0]} images")
        feats, positions, scores = self.masker(self.encoder(images), positions)
        z_q, codes, qloss = self.quantizer(feats)
        return z_q, codes, positions, scores, qloss

    @torch.no_grad()
    def encode(self, images: torch.Tensor, positions: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B, C, R, R] -> (codes [B, k] int64, positions [B, k] int64 ascending (raster
        order), scores [B, h, w]). positions: as in `quantize` (returned as given)."""
        _, codes, positions, scores, _ = self.quantize(images, positions)
        return codes, positions, scores

    def decode(self, z_q: torch.Tensor, positions: torch.Tensor, record: list | None = None) -> torch.Tensor:
        """Code vectors [B, n, d] at positions [B, n] -> images [B, C, R, R] (differentiable)."""
        # the codebook stays fp32 (EMA state) when the model is cast to bf16/fp16
        return self.decoder(self.demasker(z_q.to(self.demasker.proj.weight.dtype), positions, record))

    def decode_tokens(self, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """codes [B, n] at positions [B, n] (any order, distinct per row) -> images [B, C, R, R]."""
        self._check_tokens(codes, positions)
        return self.decode(self.quantizer.indices_to_codes(codes), positions)

    def demask_attention(self, codes: torch.Tensor, positions: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The de-mask module's attention, layer by layer, for tokens [B, n]: a list of
        {"input": block input [B, C, h, w], "scale": key scale a [B, h*w], "weights": post-
        softmax weights times a, [B, h*w, h*w]} (explicit weights: small grids only)."""
        self._check_tokens(codes, positions)
        record: list = []
        self.decode(self.quantizer.indices_to_codes(codes), positions, record)
        return record

    def forward(self, images: torch.Tensor, perceptual: nn.Module | None = None, perceptual_weight: float = 1.0,
                adversarial=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """images -> (reconstruction, losses). losses: "rec" (L2 or L1), "commit" (mean
        ||Z - sg(Zq)||^2 over kept tokens), "quant" (the quantizer's weighted loss), optional
        "perceptual" (perceptual(x, rec) * weight) and "adversarial" (adversarial.generator_loss,
        e.g. `vqgan_losses.HingeGAN`), and "total" (their sum)."""
        z_q, _, positions, _, qloss = self.quantize(images)
        rec = self.decode(z_q, positions)
        rec_term = F.mse_loss(rec, images) if self.cfg.rec_loss == "l2" else F.l1_loss(rec, images)
        losses = {"rec": rec_term, "commit": qloss.commitment, "quant": qloss.total}
        total = rec_term + qloss.total
        if perceptual is not None:
            losses["perceptual"] = perceptual_weight * perceptual(images, rec)
            total = total + losses["perceptual"]
        if adversarial is not None:
            losses["adversarial"] = adversarial.generator_loss(rec)
            total = total + losses["adversarial"]
        losses["total"] = total
        return rec, losses

    @torch.no_grad()
    def importance_map_png(self, images: torch.Tensor, path) -> None:
        """PNG of input | score heat map (red high, blue low) | kept regions | reconstruction,
        one row per image (supp. Figs. 5-7). Runs in eval mode (no codebook or batch-norm update)."""
        from vqfast.models.mqvae.viz import save_importance_maps

        was_training = self.training
        self.eval()
        codes, positions, scores = self.encode(images)
        save_importance_maps(images, scores, positions, self.decode_tokens(codes, positions), path)
        self.train(was_training)
