"""The output types every family shares: one loss type, one tokenizer forward type.

Encodings and sampler results are NamedTuples of each family (their first field is
always `tokens`); losses are `LossOutput` everywhere.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class LossOutput(NamedTuple):
    """A training objective: `total` (scalar, differentiable) and `terms` (name -> detached scalar)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def loss_output(total: torch.Tensor, **terms: torch.Tensor | float) -> LossOutput:
    """LossOutput with every term detached (floats become 0-dim tensors)."""
    return LossOutput(total, {k: torch.as_tensor(v).detach() for k, v in terms.items()})


class TokenizerOutput(NamedTuple):
    """`tokenizer(images)`: the reconstruction [B, C, H, W], the tokens and the loss of the batch."""

    reconstruction: torch.Tensor
    tokens: torch.Tensor
    loss: LossOutput
