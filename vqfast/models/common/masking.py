"""Mask schedules gamma(r) and the random training masks of masked token modeling (MaskGIT Sec. 3.2).

Training: per image r ~ U[0, 1), n = clamp(ceil(gamma(r) * L), 1, L) positions chosen
uniformly are replaced by [MASK]; the loss is cross entropy on the masked positions
only. Masking is vectorized (one argsort of uniform scores), unlike the lab's
per-sample loop.

Schedules gamma(r) (MaskGIT's `mask_schedule.py`): linear 1-r, cosine cos(pi r/2),
square 1-r^2, cubic 1-r^3, sqrt 1-sqrt(r), log -log2(r)/log2(n), exp 1-n^-(1-r)
(n: the number of tokens to generate; every schedule is clamped to [0, 1]).
"""
from __future__ import annotations

import math

import torch

from vqfast.random import as_generator

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
