"""VQ-DDM reverse process: sampling and inpainting of token maps (seed Sec. 3.1, 4.4; Fig. 5).

Each step feeds z_t to the model (x0 logits, eq. 23) and draws z_{t-1} ~ q(z_{t-1} | z_t,
softmax(logits)) with the fused `vqfast.diffusion.posterior_sample` (Gumbel-max; the
[B, L, K] posterior is never written). The last step draws z0 from the decoder
p(z0 | z1) = Cat(softmax(logits)) (eq. 22) with the fused `vqfast.ops.sample_logits`.

Strided sampling over timesteps 0 = tau_0 < tau_1 < ... < tau_S = T: for uniform
(multinomial) noise the S-step chain is exact, because the transitions compose,
Q_{tau_{i-1} -> tau_i} = prod_{j in (tau_{i-1}, tau_i]} Q_j = a I + (1 - a) / K with
a = prod alpha_j = abar_{tau_i} / abar_{tau_{i-1}}. So the posterior of one jump is eq. 21
with alpha_t -> a and abar_{t-1} -> abar_{tau_{i-1}}:
    q(z_{tau_{i-1}} | z_{tau_i}, x0) ~ [a z_{tau_i} + (1 - a)/K] * [abar_{tau_{i-1}} x0 + (1 - abar_{tau_{i-1}})/K].
The sampler runs the fused op on a strided schedule (alpha_bar' = abar[tau], alpha'_i = the
product above), so stride 1 is the full chain bit for bit.

Inpainting (Sec. 4.4, DESIGN.md op 10): known positions start from q(z_T | z0) and are
re-drawn from q(z_{t-1} | z0) of the known tokens after every step (fused `q_sample`),
unknown positions follow the model; at t = 0 the known tokens are returned unchanged.

Randomness: one 64-bit key from `generator` / `seed`; step tau draws with key
mix(key, tau), so a run is reproducible and a strided run shares its noise with the full
run at the timesteps both visit.

    z0 = vqddm_sample(model, 16, schedule, steps=100, seed=0)                 # [16, h, w]
    z0 = vqddm_sample(model, 4, schedule, known=tokens, mask=missing, seed=0)   # inpainting
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from vqfast import _random
from vqfast.diffusion import posterior_sample, q_sample
from vqfast.ops import sample_logits

_MASK64 = (1 << 64) - 1


def _mix(key: int, salt: int) -> int:
    """splitmix64 of key + salt: independent 64-bit keys per timestep."""
    z = (key + (salt + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def timesteps(T: int, steps: int | None = None) -> list[int]:
    """The visited timesteps [tau_S = T, ..., tau_1] (descending, tau_0 = 0 implied): all T
    (steps None or T), else `steps` values evenly spaced in 1..T (rounded, distinct)."""
    if steps is None or steps == T:
        return list(range(T, 0, -1))
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int in 1..T = 1..{T} or None, got {steps!r}")
    taus = torch.linspace(T, T / steps, steps, dtype=torch.float64).round().long().unique().tolist()
    return sorted(taus, reverse=True)


def strided_schedule(schedule, taus: list[int]) -> SimpleNamespace:
    """A schedule over the jumps tau_{i-1} -> tau_i (taus descending, tau_0 = 0 added):
    alpha_bar'[i] = abar[tau_i], alpha'[i] = prod_{j in (tau_{i-1}, tau_i]} alpha_j."""
    asc = [0] + sorted(taus)
    if len(set(asc)) != len(asc) or asc[-1] > schedule.T:
        raise ValueError(f"timesteps must be distinct values in 1..T = 1..{schedule.T}")
    alpha = torch.ones(len(asc), dtype=torch.float64)
    for i in range(1, len(asc)):
        alpha[i] = torch.prod(schedule.alpha[asc[i - 1] + 1:asc[i] + 1])
    return SimpleNamespace(alpha_bar=schedule.alpha_bar[asc].clone(), alpha=alpha, T=len(asc) - 1,
                           taus=asc)


def _check(model, batch, known, mask, class_labels):
    K, s = model.codebook_size, model.size
    if (known is None) != (mask is None):
        raise ValueError("known and mask go together (inpainting): pass both or neither")
    if known is not None:
        if not isinstance(known, torch.Tensor) or known.dtype != torch.int64 or known.shape[1:] not in \
                ((s, s), (s * s,)):
            raise ValueError(f"known must be int64 [B, {s}, {s}] or [B, {s * s}], got "
                             f"{getattr(known, 'dtype', None)} {tuple(getattr(known, 'shape', ()))}")
        if known.numel() and (int(known.min()) < 0 or int(known.max()) >= K):
            raise ValueError(f"known must lie in [0, K) = [0, {K})")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != known.shape:
            raise ValueError(f"mask must be a bool tensor of known's shape {tuple(known.shape)} (True = missing), "
                             f"got {getattr(mask, 'dtype', None)} {tuple(getattr(mask, 'shape', ()))}")
        if batch not in (None, known.shape[0]):
            raise ValueError(f"batch={batch} disagrees with known's batch {known.shape[0]}")
        return known.shape[0], tuple(known.shape[1:])
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    return batch, (s, s)


@torch.no_grad()
def vqddm_sample(model, batch: int | None, schedule, *, steps: int | None = None,
                 known: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 class_labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 seed: int | None = None, progress: bool = False, backend: str = "auto") -> torch.Tensor:
    """Reverse process from uniform noise -> token maps int64 [B, h, w] (or known's shape).

    model: a VQDDM (z_t, t, class_labels -> x0 logits [B, ..., K]); schedule: CosineSchedule
    with schedule.T <= model.T; steps: None (all T) or the number of strided steps; known
    [B, h, w] int64 + mask (bool, True = missing = generated) for inpainting;
    class_labels [B] for a class-conditional model; progress: a tqdm bar over the steps.
    """
    B, shape = _check(model, batch, known, mask, class_labels)
    if schedule.T > model.T:
        raise ValueError(f"schedule.T={schedule.T} exceeds the model's T={model.T}")
    K = model.codebook_size
    device = next(model.parameters()).device
    taus = timesteps(schedule.T, steps)
    sched = strided_schedule(schedule, taus)
    key = _random.philox_key(generator, seed)
    g = torch.Generator().manual_seed(_mix(key, -1) >> 1)
    z = torch.randint(K, (B, *shape), generator=g).to(device)
    if known is not None:
        known, missing = known.to(device), mask.to(device)
        z = torch.where(missing, z, q_sample(known, schedule.T, schedule, seed=_mix(key, -2), num_classes=K))
    from tqdm.auto import tqdm

    for i in tqdm(range(sched.T, 0, -1), desc="vqddm", disable=not progress, leave=False):
        tau, tau_prev = sched.taus[i], sched.taus[i - 1]
        t = torch.full((B,), tau, dtype=torch.long, device=device)
        logits = model(z, t, class_labels)
        if i > 1:
            z = posterior_sample(logits, z, i, sched, seed=_mix(key, tau), backend=backend)
        else:  # decoder p(z0 | z_tau1) = Cat(softmax(logits)) (eq. 22)
            z = sample_logits(logits, seed=_mix(key, tau), backend=backend)
        if known is not None:
            again = known if tau_prev == 0 else q_sample(known, tau_prev, schedule, seed=_mix(key, -3 - tau_prev),
                                                          num_classes=K)
            z = torch.where(missing, z, again)
    return z
