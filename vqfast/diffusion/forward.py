"""q_sample: the forward (noising) process of discrete diffusion (VQ-DDM eq. 17)."""
from __future__ import annotations

import torch

from vqfast.diffusion.schedule import TRANSITIONS
from vqfast.ops import _validate
from vqfast.random import STREAM_Q_KEEP, STREAM_Q_TOKEN, philox_key, uniform, words


def q_sample(z0: torch.Tensor, t, schedule, generator: torch.Generator | int | None = None, *,
             seed: int | None = None, num_classes: int | None = None, transition: str = "uniform") -> torch.Tensor:
    """z_t ~ q(z_t | z0) = Cat(abar_t z0 + (1 - abar_t) / K) ("uniform", eq. 17) or
    Cat(abar_t z0 + (1 - abar_t) e_K) ("absorbing": the mask state is K).

    z0 [B, ...] int64 in [0, K), t [B] int64 (or an int) in 0..T -> z_t [B, ...] int64.
    K = num_classes, or schedule.num_classes when not given. Position n (flat index) keeps
    z0 when uniform(STREAM_Q_KEEP, n) < float32(abar_t), else becomes the mask K
    ("absorbing") or the token (w * K) >> 32 with w = word(STREAM_Q_TOKEN, n) ("uniform": a
    uniform draw that may equal z0, as eq. 17 says). O(B * L) work with two Philox numbers
    per position, keyed by `generator` or `seed`, so one implementation serves every device.

        z_t = q_sample(z0, t, CosineSchedule(4000, num_classes=1024), torch.Generator().manual_seed(0))
    """
    _validate.schedule(schedule)
    transition = _validate.one_of("transition", transition, TRANSITIONS)
    K = num_classes if num_classes is not None else getattr(schedule, "num_classes", None)
    if K is None:
        raise ValueError("num_classes is needed: pass num_classes=K to q_sample "
                         "(or build the schedule with CosineSchedule(T, num_classes=K))")
    K = _validate.integer("num_classes", K, low=1)
    if K > 1 << 31:  # the uniform token (w * K) >> 32 of a 32-bit word w is computed in int64
        raise ValueError(f"num_classes must be <= 2^31, got {K}")
    _validate.tensor("z0", z0, dtypes=(torch.int64,), min_dim=1)
    _validate.nonempty("z0", z0, (0,), "[B, ...] with B >= 1")
    _validate.values_below("z0", z0, K, "K")
    t = _validate.timesteps(t, z0.shape[0], schedule.T, z0.device, lowest=0)
    key = philox_key(generator, seed)
    n = torch.arange(z0.numel(), device=z0.device).reshape(z0.shape[0], -1)
    abar = schedule.alpha_bar.to(torch.float32).to(z0.device)[t]
    keep = uniform(key, STREAM_Q_KEEP, n) < abar[:, None]
    if transition == "absorbing":
        other = torch.full_like(n, K)
    else:
        other = (words(key, STREAM_Q_TOKEN, n) * K) >> 32
    return torch.where(keep, z0.reshape(n.shape), other).reshape(z0.shape)
