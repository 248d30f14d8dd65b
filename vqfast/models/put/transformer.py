"""UQ-Transformer (PUT supp. Sec. 4.2, Table 3, eqs. 9-10) and its training step.

The input is the un-quantized feature map f_hat of the masked image (no token
embedding): Linear(d -> D) + learned position embedding, n' pre-LN blocks
(eq. 9: f~ = f + MSA(LN(f)); f = f~ + MLP(LN(f~)), GELU MLP with 4x width), LN, and a
linear head over the K tokens of codebook e.

    t = UQTransformer.from_preset("ffhq", device="meta")      # Table 3: 95.0M parameters
    logits = t(features)                                      # [B, L, d] -> [B, L, K]
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.common.transformer import Block

# Table 3 (n', h, D; D' = D / h = 64, 64, 128); L = 32 x 32 tokens of a 256x256 image with r = 8,
# K = 512 tokens of e.
PRESETS = {
    "ffhq": dict(n_layers=30, n_heads=8, dim=512),
    "places2": dict(n_layers=35, n_heads=8, dim=512),
    "imagenet": dict(n_layers=35, n_heads=8, dim=1024),
}
TABLE3_PARAMS = {"ffhq": 95.0e6, "places2": 110.7e6, "imagenet": 441.7e6}


class UQTransformer(nn.Module):
    """features [B, L, feature_dim] (un-quantized P-VQVAE features) -> logits [B, L, vocab_size].

    feature_dim d of the P-VQVAE, vocab_size K (tokens of e), seq_len L (learned
    positions), dim D, n_layers n', n_heads h (head size D' = D / h). The blocks are
    `vqfast.models.common.transformer.Block` (eq. 9; fused qkv and scaled_dot_product_attention
    for eq. 10, so the [B, h, L, L] scores are never stored on the flash path).
    """

    def __init__(self, *, feature_dim: int = 256, vocab_size: int = 512, seq_len: int = 1024, dim: int = 512,
                 n_layers: int = 30, n_heads: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        self.config = dict(feature_dim=feature_dim, vocab_size=vocab_size, seq_len=seq_len, dim=dim,
                           n_layers=n_layers, n_heads=n_heads, mlp_ratio=mlp_ratio)
        self.feature_dim, self.vocab_size, self.seq_len = feature_dim, vocab_size, seq_len
        self.emb = nn.Linear(feature_dim, dim)
        self.pos = nn.Parameter(torch.zeros(1, seq_len, dim))
        self.blocks = nn.ModuleList(Block(dim, n_heads, mlp_ratio) for _ in range(n_layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        if self.pos.device.type != "meta":
            self.apply(self._init)
            nn.init.normal_(self.pos, std=0.02)

    @staticmethod
    def _init(m):
        # GPT-style init (as in the PUT/ICT transformers): N(0, 0.02) weights, zero biases.
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    @classmethod
    def from_preset(cls, name: str, *, device=None, dtype=None, **overrides) -> "UQTransformer":
        """Table 3 sizes: "ffhq" (n'=30, D=512), "places2" (n'=35, D=512), "imagenet" (n'=35, D=1024).

        device="meta" builds the shapes without memory. Overrides (e.g. seq_len) replace preset fields.
        """
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
        cfg = dict(PRESETS[name], **overrides)
        with torch.device(device) if device is not None else nullcontext():
            model = cls(**cfg)
        return model.to(dtype=dtype) if dtype is not None else model

    @classmethod
    def tiny(cls, **overrides) -> "UQTransformer":
        """A CPU-sized UQ-Transformer for 8x8 token grids of the tiny P-VQVAE."""
        cfg = dict(feature_dim=64, vocab_size=128, seq_len=64, dim=128, n_layers=4, n_heads=4)
        cfg.update(overrides)
        return cls(**cfg)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, L, d] -> block input [B, L, D] (projection + positions)."""
        if features.dim() != 3 or features.shape[-1] != self.feature_dim:
            raise ValueError(f"features must be [B, L, {self.feature_dim}], got {tuple(features.shape)}")
        if features.shape[1] > self.seq_len:
            raise ValueError(f"features have L={features.shape[1]} positions but the model has seq_len={self.seq_len}")
        return self.emb(features) + self.pos[:, :features.shape[1]]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, L, d] -> logits [B, L, K] (fp32).

        Under autocast, or as a bf16 `vqfast.models.common.inference.inference_copy` (bf16 block
        weights, fp32 residual stream: what put_fill runs for autocast_dtype), the blocks run
        in the low-precision dtype, but the final LayerNorm and head stay in fp32: they cost
        ~0.3% of the FLOPs and bf16 logits (8-bit mantissa) would flip near-tied argmaxes of
        Algorithm 1.
        """
        x = self.embed(features)
        for block in self.blocks:
            x = block(x)
        plain = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else nullcontext()
        with plain:
            return self.head(self.ln(x.to(self.head.weight.dtype))).float()


class UQTrainingBatch(NamedTuple):
    """features [B, L, d] (transformer input), targets [B, L] (tokens of the unmasked image, in e),
    known [B, L] bool (visible tokens; the loss covers the others), quantized [B, L] bool (m')."""
    features: torch.Tensor
    targets: torch.Tensor
    known: torch.Tensor
    quantized: torch.Tensor


@torch.no_grad()
def uq_training_batch(vae, image: torch.Tensor, mask: torch.Tensor, *, random_quantize: float = 0.3,
                      generator: torch.Generator | None = None) -> UQTrainingBatch:
    """Inputs and targets for one UQ-Transformer step (the P-VQVAE is frozen, run in eval mode).

    m (mask, True = missing): the input is f_hat = E(x * m); targets are the e-tokens of the
    whole image E(x); the loss covers tokens with any missing pixel.
    m' (drawn here): each visible token is replaced by its quantized vector e_k with
    probability random_quantize (0.3 in the official configs), so the model also sees the
    quantized vectors that Algorithm 1 writes back (line 14).
    """
    was_training = vae.training
    vae.eval()
    try:
        features, known = vae.encode(image, mask)
        full, _ = vae.encode(image, None)
        all_visible = torch.ones_like(known)
        _, targets, _ = vae.quantize(full, all_visible)
        _, own_tokens, _ = vae.quantize(features, all_visible)
    finally:
        vae.train(was_training)
    B, h, w, d = features.shape
    draw = torch.rand(known.shape, generator=generator, device=known.device) < random_quantize
    quantized = known & draw
    features = torch.where(quantized[..., None], vae.codes(own_tokens), features)
    return UQTrainingBatch(features.reshape(B, h * w, d), targets.reshape(B, h * w), known.reshape(B, h * w),
                           quantized.reshape(B, h * w))


def uq_loss(transformer: UQTransformer, batch: UQTrainingBatch) -> torch.Tensor:
    """Cross-entropy over the unknown (masked) tokens only, averaged over them."""
    logits = transformer(batch.features)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="none")
    weight = (~batch.known).flatten().float()
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)
