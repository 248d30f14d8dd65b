"""BidirectionalTransformer: MaskGIT's token model (MaskGIT Sec. 3.1-3.2).

Pre-LN blocks (`vqfast.models.common.transformer.Block`), a learned positional embedding,
token ids 0..K-1 plus [MASK] = K (the codebook size). Optional class conditioning
prepends one class token; class id `num_classes` is the null class that classifier-free
guidance uses. The head predicts the K codes only ([MASK] is never a prediction).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from vqfast.models.common.transformer import Block, init_weights


class BidirectionalTransformer(nn.Module):
    """tokens [B, L] (ids 0..K, K = [MASK]) -> logits [B, L, K].

    codebook_size K, seq_len L, dim, depth, heads; num_classes > 0 enables class
    conditioning (forward takes class_labels [B], id num_classes = null / unconditional).

        net = BidirectionalTransformer(codebook_size=256, seq_len=64, dim=128, depth=4, heads=4)
        logits = net(torch.full((2, 64), net.mask_id))     # [2, 64, 256]
    """

    def __init__(self, codebook_size: int, seq_len: int, dim: int = 768, depth: int = 24, heads: int = 16,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        for name, v in (("codebook_size", codebook_size), ("seq_len", seq_len), ("dim", dim), ("depth", depth),
                        ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.config = dict(codebook_size=codebook_size, seq_len=seq_len, dim=dim, depth=depth, heads=heads,
                           mlp_ratio=mlp_ratio, dropout=dropout, num_classes=num_classes)
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
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(f"tokens must be [B, {self.seq_len}], got shape {tuple(tokens.shape)}")
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

    def flops_per_forward(self, batch: int) -> int:
        """Multiply-add FLOPs (2 per MAC) of one forward on [batch, seq_len] tokens."""
        c = self.config
        L = self.seq_len + (self.num_classes > 0)
        d, hidden = c["dim"], int(c["dim"] * c["mlp_ratio"])
        per_block = 2 * L * d * (3 * d + d + 2 * hidden) + 2 * 2 * L * L * d
        return batch * (c["depth"] * per_block + 2 * self.seq_len * d * self.codebook_size)
