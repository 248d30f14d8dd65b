"""The cosine noise schedule of VQ-DDM (Sec. 3.1, eq. 19), the transition kinds, and the
per-step coefficients of the posterior that every backend reads."""
from __future__ import annotations

import math

import torch

from vqfast.ops import _validate

TRANSITIONS = ("uniform", "absorbing")


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
        T = _validate.integer("T", T, low=1)
        s = _validate.real("s", s, low=0.0, low_open=True)
        if num_classes is not None:
            num_classes = _validate.integer("num_classes", num_classes, low=1)
        self.T, self.s, self.clip_sqrt, self.num_classes = T, s, bool(clip_sqrt), num_classes
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


def num_states(K: int, transition: str) -> int:
    """Number of states of z_t: K (uniform) or K + 1 (absorbing, the last is the mask)."""
    return K + 1 if transition == "absorbing" else K


def posterior_coefficients(schedule, t: torch.Tensor, K: int, transition: str) -> torch.Tensor:
    """float32 [B, 6] per-row constants of the posterior (eqs. 20-21) at timesteps t [B]
    (layout in csrc/include/vqfast/diffusion_math.h), float64 from the schedule, rounded once.

    uniform: (log E0, log E1, log ab, log ck, ab, ck) with E0 = (1-a)/K, E1 = a + (1-a)/K,
    ab = abar_{t-1}, ck = (1-ab)/K; absorbing: (log c, log m, c, 0, 0, 0) with
    c = (abar_{t-1} - abar_t) / (1 - abar_t), m = (1 - abar_{t-1}) / (1 - abar_t).
    """
    abar = schedule.alpha_bar.to(t.device)
    ab, a, abt = abar[t - 1], schedule.alpha.to(t.device)[t], abar[t]
    if transition == "uniform":
        cols = [((1 - a) / K).log(), (a + (1 - a) / K).log(), ab.log(), ((1 - ab) / K).log(), ab, (1 - ab) / K]
    else:
        zero = torch.zeros_like(ab)
        keep, mask = (ab - abt) / (1 - abt), (1 - ab) / (1 - abt)
        cols = [keep.log(), mask.log(), keep, zero, zero, zero]
    return torch.stack(cols, dim=1).to(torch.float32)


def sample_coefficients(schedule, t: torch.Tensor, K: int, transition: str) -> torch.Tensor:
    """float32 [B, 4] mixture weights of posterior_sample (float64 from the schedule, rounded once;
    elementwise + - * / only, so the same numbers whatever the tensor's length).

    uniform: (ab E1, ab E0, ck (E0 (K-1) + E1), E1 / (E0 (K-1) + E1)); absorbing: (0, c, m, 0)
    (names as in `posterior_coefficients`).
    """
    abar = schedule.alpha_bar.to(t.device)
    ab, a, abt = abar[t - 1], schedule.alpha.to(t.device)[t], abar[t]
    if transition == "uniform":
        e0, e1, ck = (1 - a) / K, a + (1 - a) / K, (1 - ab) / K
        cols = [ab * e1, ab * e0, ck * (e0 * (K - 1) + e1), e1 / (e0 * (K - 1) + e1)]
    else:
        zero = torch.zeros_like(ab)
        cols = [zero, (ab - abt) / (1 - abt), (1 - ab) / (1 - abt), zero]
    return torch.stack(cols, dim=1).to(torch.float32)
