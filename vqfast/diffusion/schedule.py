"""The cosine noise schedule of VQ-DDM (seed Sec. 3.1, eq. 19)."""
from __future__ import annotations

import math

import torch


class CosineSchedule:
    """abar_t = f(t) / f(0), f(t) = cos(((t/T + s) / (1 + s)) * pi/2)^2 (eq. 19), t = 0..T.

    `alpha_bar` float64 [T+1] with alpha_bar[0] = 1; `alpha` float64 [T+1] with
    alpha[t] = alpha_bar[t] / alpha_bar[t-1] for t >= 1 (alpha[0] = 1 by convention).
    `clip_sqrt=True` reproduces the official VQ-DDM / multinomial-diffusion code instead:
    alpha_t = sqrt(clip(abar_t / abar_{t-1}, 0.001, 1)) and alpha_bar = cumprod(alpha)
    (not the paper's equations). `num_classes` (optional) is K, the default for
    `q_sample` when it is not passed there.

        sched = CosineSchedule(4000)
        sched.alpha_bar[0], sched.alpha_bar[-1]   # 1.0, ~0.0
    """

    def __init__(self, T: int, s: float = 0.008, *, clip_sqrt: bool = False, num_classes: int | None = None):
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T must be an int >= 1, got {T!r}")
        if not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise ValueError(f"s must be a finite float > 0, got {s!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be an int >= 1 or None, got {num_classes!r}")
        self.T, self.s, self.clip_sqrt, self.num_classes = T, float(s), bool(clip_sqrt), num_classes
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + s) / (1 + s) * (math.pi / 2)) ** 2
        abar = (f / f[0]).clamp(0.0, 1.0)
        abar[0] = 1.0
        alpha = torch.ones(T + 1, dtype=torch.float64)
        if clip_sqrt:
            alpha[1:] = (abar[1:] / abar[:-1]).clamp(0.001, 1.0).sqrt()
            abar = torch.cumprod(alpha, 0)
        else:
            alpha[1:] = abar[1:] / abar[:-1]
        self.alpha_bar, self.alpha = abar, alpha

    def __repr__(self) -> str:
        extra = ", clip_sqrt=True" if self.clip_sqrt else ""
        extra += f", num_classes={self.num_classes}" if self.num_classes is not None else ""
        return f"CosineSchedule(T={self.T}, s={self.s}{extra})"
