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

from vqfast.models.common.outputs import LossOutput, loss_output
from vqfast.models.common.presets import PresetMixin
from vqfast.models.common.transformer import Block
from vqfast.random import as_generator

# Table 3's parameter counts (for the preset sizes).
TABLE3_PARAMS = {"ffhq": 95.0e6, "places2": 110.7e6, "imagenet": 441.7e6}
# Table 3's sizes (n', h, D).
_TABLE3 = {"ffhq": dict(depth=30, heads=8, dim=512), "places2": dict(depth=35, heads=8, dim=512),
           "imagenet": dict(depth=35, heads=8, dim=1024)}


class GELU2(nn.Module):
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU (Hendrycks & Gimpel, Sec. 2) that
    the official CVPR'22 UQ-Transformer uses in its MLPs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class UQTransformer(PresetMixin, nn.Module):
    """features [B, L, feature_dim] (un-quantized P-VQVAE features) -> logits [B, L, vocab_size].

    feature_dim d of the P-VQVAE, vocab_size K (tokens of e), seq_len L (learned
    positions), dim D, depth n', heads h (head size D' = D / h). The blocks are
    `vqfast.models.common.transformer.Block` (eq. 9; fused qkv and scaled_dot_product_attention
    for eq. 10, so the [B, h, L, L] scores are never stored on the flash path).

    Presets: "tiny" (8x8 token grids of the tiny P-VQVAE) and Table 3's "ffhq" (n'=30,
    D=512), "places2" (n'=35, D=512), "imagenet" (n'=35, D=1024), all with L = 32 x 32 tokens
    of a 256x256 image (r = 8) and K = 512 tokens of e; "cvpr2022-<name>": the same sizes in
    the official layout (what `vqfast.convert` reads); "<name>-tok": PUT^tok (Table 5).

    layout: "vqfast" (GELU MLPs, Figure 1(c)) or "cvpr2022" (the official code's MLP
    activation GELU2, x * sigmoid(1.702 x); its LayerNorms use eps 1e-5, as here).
    token_input: PUT^tok of Table 5: the input is the quantized vectors e_t / e'_t of the
    tokens instead of the un-quantized features (`put_sample` and `uq_training_batch` read
    this flag).
    """

    PRESETS = {
        "tiny": dict(feature_dim=64, vocab_size=128, seq_len=64, dim=128, depth=4, heads=4),
        **_TABLE3,
        **{f"cvpr2022-{k}": dict(v, layout="cvpr2022") for k, v in _TABLE3.items()},
        **{f"{k}-tok": dict(v, token_input=True) for k, v in _TABLE3.items()},
    }
    LAYOUTS = ("vqfast", "cvpr2022")
    CONFIG_ALIASES = {"n_layers": "depth", "n_heads": "heads"}

    def __init__(self, *, feature_dim: int = 256, vocab_size: int = 512, seq_len: int = 1024, dim: int = 512,
                 depth: int = 30, heads: int = 8, mlp_ratio: float = 4.0, layout: str = "vqfast",
                 token_input: bool = False):
        super().__init__()
        for name, v in (("feature_dim", feature_dim), ("vocab_size", vocab_size), ("seq_len", seq_len),
                        ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if layout not in self.LAYOUTS:
            raise ValueError(f"layout must be one of {self.LAYOUTS}, got {layout!r}")
        if not isinstance(token_input, bool):
            raise TypeError(f"token_input must be a bool, got {type(token_input).__name__}")
        self.config = dict(feature_dim=feature_dim, vocab_size=vocab_size, seq_len=seq_len, dim=dim,
                           depth=depth, heads=heads, mlp_ratio=mlp_ratio, layout=layout, token_input=token_input)
        self.feature_dim, self.vocab_size, self.seq_len = feature_dim, vocab_size, seq_len
        self.token_input = token_input
        self.emb = nn.Linear(feature_dim, dim)
        self.pos = nn.Parameter(torch.zeros(1, seq_len, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        if layout == "cvpr2022":
            for block in self.blocks:
                block.mlp[1] = GELU2()
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

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, L, d] -> block input [B, L, D] (projection + positions)."""
        if not isinstance(features, torch.Tensor) or not features.is_floating_point():
            raise TypeError(f"features must be a float tensor [B, L, {self.feature_dim}], got "
                            f"{getattr(features, 'dtype', type(features).__name__)}")
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

    def loss(self, batch: UQTrainingBatch) -> LossOutput:
        """Training objective: cross-entropy over the masked tokens only, averaged over them.

        batch: a `UQTrainingBatch` from `uq_training_batch(vae, images, mask, generator=...)`.
        Terms: ce (the same value, detached).

            out = net.loss(uq_training_batch(vae, x, mask, generator=0))
            out.total.backward()
        """
        if not isinstance(batch, UQTrainingBatch):
            raise TypeError(f"batch must be a UQTrainingBatch (from uq_training_batch), got {type(batch).__name__}")
        if self.token_input and not torch.equal(batch.quantized, ~batch.mask):
            raise ValueError("batch: this PUT^tok transformer (token_input=True) takes quantized inputs; build the "
                             "batch with uq_training_batch(..., token_input=True)")
        logits = self(batch.features)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="none")
        weight = batch.mask.flatten().float()
        total = (ce * weight).sum() / weight.sum().clamp_min(1.0)
        return loss_output(total, ce=total)


class UQTrainingBatch(NamedTuple):
    """features [B, L, d] (transformer input), targets [B, L] (tokens of the unmasked image, in e),
    mask [B, L] bool (True = the token has a missing pixel: the loss covers these),
    quantized [B, L] bool (m': visible tokens whose feature was replaced by its code)."""
    features: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    quantized: torch.Tensor


@torch.no_grad()
def uq_training_batch(vae, images: torch.Tensor, mask: torch.Tensor, *, random_quantize: float = 0.3,
                      generator: torch.Generator | int | None = None, token_input: bool = False) -> UQTrainingBatch:
    """Inputs and targets for one UQ-Transformer step (the P-VQVAE is frozen, run in eval mode).

    vae: a PVQVAE; images [B, 3, H, W] in [-1, 1]; mask bool [B, H, W] (m, True = missing):
    the input is f_hat = E(x * m); targets are the e-tokens of the whole image E(x); the loss
    covers tokens with any missing pixel.
    m' (drawn here with `generator`: a torch.Generator, an int seed or None): each visible
    token is replaced by its quantized vector e_k with probability random_quantize (0.3 in the
    official configs), so the model also sees the quantized vectors that Algorithm 1 writes
    back (line 14).
    token_input: inputs for PUT^tok (Table 5): every position's quantized vector (e for visible
    tokens, e' for masked ones), as `UQTransformer(token_input=True)` sees them (no m').
    """
    if not 0.0 <= random_quantize <= 1.0:
        raise ValueError(f"random_quantize must be a probability in [0, 1], got {random_quantize!r}")
    was_training = vae.training
    vae.eval()
    try:
        enc = vae.encode(images, mask)
        targets = vae.encode(images, None).tokens
        _, own_tokens, _ = vae.quantize(enc.features, torch.zeros_like(enc.mask))
    finally:
        vae.train(was_training)
    B, h, w, d = enc.features.shape
    if token_input:
        return UQTrainingBatch(vae.codes(enc.tokens).reshape(B, h * w, d), targets.reshape(B, h * w),
                               enc.mask.reshape(B, h * w), ~enc.mask.reshape(B, h * w))
    g = as_generator(generator, images.device)
    draw = torch.rand(enc.mask.shape, generator=g, device=images.device) < random_quantize
    quantized = ~enc.mask & draw
    features = torch.where(quantized[..., None], vae.codes(own_tokens), enc.features)
    return UQTrainingBatch(features.reshape(B, h * w, d), targets.reshape(B, h * w), enc.mask.reshape(B, h * w),
                           quantized.reshape(B, h * w))
