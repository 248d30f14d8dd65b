"""q_sample: the forward (noising) process of discrete diffusion (VQ-DDM eq. 17)."""
from __future__ import annotations

import torch

from vqfast import random as _random
from vqfast.diffusion import _args
from vqfast.reference import diffusion as ref


def q_sample(z0: torch.Tensor, t, schedule, generator: torch.Generator | None = None, *, seed: int | None = None,
             num_classes: int | None = None, transition: str = "uniform") -> torch.Tensor:
    """z_t ~ q(z_t | z0) = Cat(abar_t z0 + (1 - abar_t) / K) ("uniform", eq. 17) or
    Cat(abar_t z0 + (1 - abar_t) e_K) ("absorbing": the mask state is K).

    z0 [B, ...] int64 in [0, K), t [B] int64 (or an int) in 0..T -> z_t [B, ...] int64.
    K = num_classes, or schedule.num_classes when not given. O(B * L) work with two
    Philox numbers per position (streams 17, 18), so all backends share this one
    implementation (it runs on z0's device).

        z_t = q_sample(z0, t, CosineSchedule(4000, num_classes=1024), torch.Generator().manual_seed(0))
    """
    _args.schedule(schedule)
    transition = _args.transition(transition)
    K = num_classes if num_classes is not None else getattr(schedule, "num_classes", None)
    if K is None:
        raise ValueError("q_sample needs the number of classes K: pass num_classes=K "
                         "(or build the schedule with CosineSchedule(T, num_classes=K))")
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {K!r}")
    _validate_z0(z0, K)
    t = _args.timesteps(t, z0.shape[0], schedule.T, z0.device, lowest=0)
    key = _random.philox_key(generator, seed)
    flat = z0.reshape(z0.shape[0], -1)
    return ref.q_sample(flat, t, schedule, K, key, transition).reshape(z0.shape)


def _validate_z0(z0, K: int) -> None:
    if not isinstance(z0, torch.Tensor):
        raise TypeError(f"z0 must be a torch.Tensor, got {type(z0).__name__}")
    if z0.dim() < 1 or z0.shape[0] < 1:
        raise ValueError(f"z0 must be [B, ...] with B >= 1, got shape {tuple(z0.shape)}")
    _args.tokens("z0", z0, z0.shape, K, "K")
