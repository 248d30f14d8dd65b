"""Codebook usage statistics (VQ-DDM Sec. 4.2: share of codes that appear on a set)."""
from __future__ import annotations

import torch

from vqfast.ops import _validate


def histogram(indices: torch.Tensor, K: int) -> torch.Tensor:
    """indices [...] in [0, K) -> counts [K] int64."""
    K = _validate.integer("K", K, low=1)
    return torch.bincount(_validate.indices("indices", indices, K).reshape(-1), minlength=K)


def usage(indices: torch.Tensor, K: int) -> float:
    """Share of the K codes used at least once by indices."""
    return float((histogram(indices, K) > 0).sum()) / K


def perplexity(indices: torch.Tensor, K: int) -> float:
    """exp(entropy) of the code histogram: K when uniform, 1 when collapsed to one code."""
    p = histogram(indices, K).double()
    p = p / p.sum().clamp_min(1)
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))
