"""BidirectionalTransformer: MaskGIT's token model and its MVTM training loss (MaskGIT Sec. 3.1).

Pre-LN blocks (`vqfast.models.common.transformer.Block`), a learned positional embedding,
token ids 0..K-1 plus [MASK] = K (the codebook size). Optional class conditioning
prepends one class token; class id `num_classes` is the null class that classifier-free
guidance uses. The head predicts the K codes only ([MASK] is never a prediction).

Masked visual token modeling (`loss`, MaskGIT Sec. 3.1, eq. 1; masks Sec. 3.3): per image
r ~ U[0, 1), ceil(gamma(r) * L) positions replaced by [MASK] (gamma: `schedule`, see
`vqfast.models.common.masking`), cross entropy (with `label_smoothing`) on the masked
positions only; in training mode class labels become the null class with probability
`class_dropout`, so that one model serves classifier-free guidance.

Label smoothing: the paper does not state any; `label_smoothing=0.1` (the default, every
preset) is the official class-conditional ImageNet config's value, with the same smoothed
targets (1 - s) * onehot + s / K. One difference: the official head scores its whole
vocabulary (codes, class and [MASK] ids), so its s / K spreads over more outputs; here K is
the codebook size, the only outputs this head has.

Presets: "tiny" (8x8 tokens of the tiny VQGAN, 256 codes; trains on a CPU in minutes),
"64px" (the 16x16 tokens, 1024 codes of the 64px VQGAN; 24 blocks x 768, 16 heads,
unconditional) and "imagenet256" (the paper's ImageNet 256x256 model, Sec. 4.1: 24 layers,
8 heads, 768 wide, 1000 classes).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.common.masking import SCHEDULES, random_mask
from vqfast.models.common.outputs import LossOutput, loss_output
from vqfast.models.common.checks import check_class_labels
from vqfast.models.common.presets import PresetMixin
from vqfast.models.common.transformer import Block, init_weights
from vqfast.random import as_generator

_PAPER = dict(codebook_size=1024, seq_len=256, dim=768, depth=24, heads=16)  # the inpainting lab's 16 heads


class BidirectionalTransformer(PresetMixin, nn.Module):
    """tokens [B, L] (ids 0..K, K = [MASK]) -> logits [B, L, K].

    codebook_size K, seq_len L, dim, depth, heads; num_classes > 0 enables class
    conditioning (forward takes class_labels [B], id num_classes = null / unconditional).
    schedule, label_smoothing and class_dropout configure `loss`.

        net = BidirectionalTransformer.from_preset("tiny")     # K = 256, L = 64
        logits = net(torch.full((2, 64), net.mask_id))         # [2, 64, 256]
        loss = net.loss(tokens, generator=0).total             # tokens [B, 64] from the tokenizer
    """

    PRESETS = {
        "tiny": dict(codebook_size=256, seq_len=64, dim=128, depth=4, heads=4),
        "64px": dict(_PAPER),
        "imagenet256": dict(_PAPER, heads=8, num_classes=1000),  # MaskGIT Sec. 4.1: 24 layers, 8 heads, 768 / 3072
    }

    def __init__(self, codebook_size: int, seq_len: int, dim: int = 768, depth: int = 24, heads: int = 16,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, num_classes: int = 0, schedule: str = "cosine",
                 label_smoothing: float = 0.1, class_dropout: float = 0.1):
        super().__init__()
        for name, v in (("codebook_size", codebook_size), ("seq_len", seq_len), ("dim", dim), ("depth", depth),
                        ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        for name, v in (("label_smoothing", label_smoothing), ("class_dropout", class_dropout)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {v!r}")
        self.config = dict(codebook_size=codebook_size, seq_len=seq_len, dim=dim, depth=depth, heads=heads,
                           mlp_ratio=mlp_ratio, dropout=dropout, num_classes=num_classes, schedule=schedule,
                           label_smoothing=label_smoothing, class_dropout=class_dropout)
        self.codebook_size, self.seq_len, self.num_classes = codebook_size, seq_len, num_classes
        self.mask_id = codebook_size
        self.tok_emb = nn.Embedding(codebook_size + 1, dim)
        self.cls_emb = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None
        self.pos_emb = nn.Parameter(torch.zeros(1, seq_len + (num_classes > 0), dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, codebook_size)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)

    def forward(self, tokens: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """tokens int64 [B, L] in [0, K] (K = mask_id) (, class_labels [B]) -> logits [B, L, K]."""
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long:
            raise TypeError(f"tokens must be an int64 tensor, got {getattr(tokens, 'dtype', type(tokens))}")
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(f"tokens must be [B, {self.seq_len}], got shape {tuple(tokens.shape)}")
        if tokens.numel() and tokens.device.type != "meta" and (tokens.min() < 0 or tokens.max() > self.mask_id):
            raise ValueError(f"tokens must lie in [0, {self.mask_id}] ({self.mask_id}: [MASK]), got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        self.check_class_labels(class_labels, tokens.shape[0])
        x = self.tok_emb(tokens)
        if self.cls_emb is not None:
            if class_labels is None:  # unconditional: the null class
                class_labels = tokens.new_full((tokens.shape[0],), self.num_classes)
            x = torch.cat([self.cls_emb(class_labels)[:, None], x], 1)
        elif class_labels is not None:
            raise ValueError("class_labels given but the transformer was built with num_classes=0")
        x = self.drop(x + self.pos_emb)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        if self.cls_emb is not None:
            x = x[:, 1:]
        return self.head(x)

    def check_class_labels(self, class_labels: torch.Tensor | None, batch: int) -> None:
        """Raise unless class_labels is None or int64 [batch] in [0, num_classes] (num_classes: the null class)."""
        check_class_labels(class_labels, batch, self.num_classes if self.cls_emb is not None else 0)

    def loss(self, tokens: torch.Tensor, *, class_labels: torch.Tensor | None = None,
             generator: torch.Generator | int | None = None, mask: torch.Tensor | None = None) -> LossOutput:
        """MVTM loss (MaskGIT eq. 1) on tokens [B, L] or [B, h, w] (int64 in 0..K-1, h * w = L):
        cross entropy over the masked positions. LossOutput terms: "ce".

        mask (bool, the shape of tokens, True = masked) replaces the random gamma(r) mask.
        In training mode class labels [B] become the null class with probability class_dropout.
        """
        K = self.codebook_size
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long:
            raise TypeError(f"tokens must be an int64 tensor, got {getattr(tokens, 'dtype', type(tokens))}")
        B = tokens.shape[0] if tokens.dim() else 0
        if tokens.dim() not in (2, 3) or B == 0 or tokens[0].numel() != self.seq_len:
            raise ValueError(f"tokens must be [B, L] or [B, h, w] with B >= 1 and L = h * w = seq_len={self.seq_len}, "
                             f"got shape {tuple(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= K:
            raise ValueError(f"tokens must lie in [0, {K}), got range [{int(tokens.min())}, {int(tokens.max())}]")
        self.check_class_labels(class_labels, B)
        g = as_generator(generator)
        if mask is None:
            mask = random_mask(B, self.seq_len, self.config["schedule"], g, tokens.device)
        elif not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
        elif mask.shape != tokens.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal tokens shape {tuple(tokens.shape)}")
        tokens, mask = tokens.reshape(B, self.seq_len), mask.reshape(B, self.seq_len)
        p_drop = self.config["class_dropout"]
        if class_labels is not None and self.training and p_drop > 0:
            drop = torch.rand(B, generator=g).to(tokens.device) < p_drop
            class_labels = class_labels.masked_fill(drop, self.num_classes)
        logits = self(tokens.masked_fill(mask, self.mask_id), class_labels)
        ce = F.cross_entropy(logits[mask].float(), tokens[mask], label_smoothing=self.config["label_smoothing"])
        return loss_output(ce, ce=ce)

    def flops_per_forward(self, batch: int) -> int:
        """Multiply-add FLOPs (2 per MAC) of one forward on [batch, seq_len] tokens."""
        c = self.config
        L = self.seq_len + (self.num_classes > 0)
        d, hidden = c["dim"], int(c["dim"] * c["mlp_ratio"])
        per_block = 2 * L * d * (3 * d + d + 2 * hidden) + 2 * 2 * L * L * d
        return batch * (c["depth"] * per_block + 2 * self.seq_len * d * self.codebook_size)
