"""MaskGIT's masked visual token modeling (MVTM, MaskGIT Sec. 3.2): the training loss
around a BidirectionalTransformer (mask schedules: `vqfast.models.common.masking`)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.common.masking import SCHEDULES, random_mask
from vqfast.models.maskgit.transformer import BidirectionalTransformer
from vqfast.random import as_generator


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
