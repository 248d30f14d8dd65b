"""MaskGIT's masked visual token modeling (MVTM, seed lab Sec. 2.2) and mask schedules.

Training: per image r ~ U[0, 1), n = clamp(ceil(gamma(r) * L), 1, L) positions chosen
uniformly are replaced by [MASK]; the loss is cross entropy on the masked positions
only. Masking is vectorized (one argsort of uniform scores), unlike the seed's
per-sample loop.

Schedules gamma(r) (MaskGIT's `mask_schedule.py`): linear 1-r, cosine cos(pi r/2),
square 1-r^2, cubic 1-r^3, sqrt 1-sqrt(r), log -log2(r)/log2(n), exp 1-n^-(1-r)
(n: the number of tokens to generate; every schedule is clamped to [0, 1]).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.random import as_generator
from vqfast.models.transformer import BidirectionalTransformer

SCHEDULES = ("linear", "cosine", "square", "cubic", "sqrt", "log", "exp")


def mask_ratio(schedule: str, r: torch.Tensor, total: torch.Tensor | int | None = None) -> torch.Tensor:
    """gamma(r): the share of tokens still masked at progress r in [0, 1] (float64 tensor).

    total (the tokens to generate) is needed by "log" and "exp" only.

        mask_ratio("cosine", torch.tensor([0.0, 0.5, 1.0]))   # [1.0, 0.7071, 0.0]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    r = torch.as_tensor(r, dtype=torch.float64)
    if schedule == "linear":
        g = 1.0 - r
    elif schedule == "cosine":
        g = torch.cos(math.pi / 2 * r)
    elif schedule == "square":
        g = 1.0 - r ** 2
    elif schedule == "cubic":
        g = 1.0 - r ** 3
    elif schedule == "sqrt":
        g = 1.0 - r.sqrt()
    else:
        if total is None:
            raise ValueError(f"schedule {schedule!r} needs total (the number of tokens to generate)")
        log_n = torch.as_tensor(total, dtype=torch.float64).clamp_min(2).log2()
        g = -torch.log2(r) / log_n if schedule == "log" else 1.0 - torch.exp2(-log_n * (1.0 - r))
    # cos(pi/2) is 6e-17, not 0: round so that gamma(1) == 0 exactly for every schedule
    return torch.where(r >= 1.0, torch.zeros_like(g), g).clamp(0.0, 1.0)


def random_mask(batch: int, length: int, schedule: str, generator=None, device="cpu") -> torch.Tensor:
    """MVTM training mask: bool [batch, length], row b masks ceil(gamma(r_b) * length)
    positions (at least 1) chosen uniformly, r_b ~ U[0, 1)."""
    g = as_generator(generator)
    r = torch.rand(batch, generator=g, dtype=torch.float64)
    n_mask = torch.ceil(mask_ratio(schedule, r, length) * length).long().clamp(1, length)
    rank = torch.rand(batch, length, generator=g).argsort(1).argsort(1)
    return (rank < n_mask[:, None]).to(device)


class MaskGIT(nn.Module):
    """MVTM training around a BidirectionalTransformer (the tokenizer stays outside, frozen).

        mg = MaskGIT(BidirectionalTransformer(256, 64, dim=128, depth=2, heads=4))
        loss = mg.loss(tokens)          # tokens [B, 64] from the tokenizer
    """

    def __init__(self, transformer: BidirectionalTransformer, schedule: str = "cosine",
                 label_smoothing: float = 0.1, class_dropout: float = 0.1):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.transformer, self.schedule = transformer, schedule
        self.label_smoothing, self.class_dropout = label_smoothing, class_dropout

    @property
    def mask_id(self) -> int:
        return self.transformer.mask_id

    def forward(self, tokens: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.transformer(tokens, class_labels)

    def loss(self, tokens: torch.Tensor, class_labels: torch.Tensor | None = None, generator=None,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """MVTM loss on tokens [B, L] (int64 in 0..K-1): cross entropy over masked positions.

        mask (bool [B, L], True = masked) overrides the random gamma(r) mask. With class
        conditioning, labels are replaced by the null class with prob class_dropout
        (for classifier-free guidance).
        """
        K = self.transformer.codebook_size
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise TypeError(f"tokens must be int64 [B, L], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= K):
            raise ValueError(f"tokens must lie in [0, {K}), got range [{int(tokens.min())}, {int(tokens.max())}]")
        g = as_generator(generator)
        B, L = tokens.shape
        if mask is None:
            mask = random_mask(B, L, self.schedule, g, tokens.device)
        if class_labels is not None and self.training and self.class_dropout > 0:
            drop = torch.rand(B, generator=g).to(tokens.device) < self.class_dropout
            class_labels = class_labels.masked_fill(drop, self.transformer.num_classes)
        logits = self.transformer(tokens.masked_fill(mask, self.mask_id), class_labels)
        return F.cross_entropy(logits[mask].float(), tokens[mask], label_smoothing=self.label_smoothing)
