"""VQ-DDM reverse process: sampling and inpainting of token maps (Sec. 3.1, 4.4; Fig. 5).

Each step feeds z_t to the model (x0 logits, eq. 23) and draws z_{t-1} ~ q(z_{t-1} | z_t,
p = softmax(logits)) without writing the [B, L, K] posterior, by one of two exact methods:

- "gumbel": the fused `vqfast.ops.posterior_sample` (Gumbel-max over all K states,
  so K Philox draws and logs per position).
- "mixture" (default): eq. 21 factorizes into three components,
      theta_k = c p_k ab + c (1 - ab)/K + a [k = z_t] (ab p_{z_t} + (1 - ab)/K),  c = (1 - a)/K,
  (a = alpha_t, ab = abar_{t-1}): "x0-model" with mass c ab, "uniform" with mass c (1 - ab),
  "keep z_t" with mass a (ab p_{z_t} + (1 - ab)/K). One uniform per position picks the
  component (a torch.Generator seeded from the step's key); only positions that pick the model
  component (rare for T = 4000: c ~ beta_t / K)
  need a categorical draw from p (fused `vqfast.ops.sample_logits` on those rows). The only
  pass over K is log-normalizing for p_{z_t}, done in row chunks with a fixed
  (_CHUNK x K) scratch, so memory per step is O(B * L) beyond the logits.
The last step draws z0 from the decoder p(z0 | z1) = Cat(softmax(logits)) (eq. 22) with
`vqfast.ops.sample_logits`.

Strided sampling over timesteps 0 = tau_0 < tau_1 < ... < tau_S = T: for uniform
(multinomial) noise the S-step chain is exact, because the transitions compose,
Q_{tau_{i-1} -> tau_i} = prod_{j in (tau_{i-1}, tau_i]} Q_j = a I + (1 - a) / K with
a = prod alpha_j = abar_{tau_i} / abar_{tau_{i-1}}. So the posterior of one jump is eq. 21
with alpha_t -> a and abar_{t-1} -> abar_{tau_{i-1}}:
    q(z_{tau_{i-1}} | z_{tau_i}, x0) ~ [a z_{tau_i} + (1 - a)/K] * [abar_{tau_{i-1}} x0 + (1 - abar_{tau_{i-1}})/K].
The sampler runs the fused op on a strided schedule (alpha_bar' = abar[tau], alpha'_i = the
product above), so stride 1 is the full chain bit for bit.

Inpainting (Sec. 4.4): known positions start from q(z_T | z0) and are
re-drawn from q(z_{t-1} | z0) of the known tokens after every step (fused `q_sample`),
unknown positions follow the model; at t = 0 the known tokens are returned unchanged.

The schedule is the model's (`VQDDM.schedule`: T and the noise schedule are its config).

Randomness: one 64-bit key from `generator` (`vqfast.random.philox_key`: an int seed is the
key itself); step tau draws with key `vqfast.random.step_key(key, tau)`, so a run is
reproducible and a strided run shares its noise with the full run at the timesteps both visit.

    z0 = vqddm_sample(model, batch_size=16, steps=100, generator=0).tokens             # [16, h, w]
    z0 = vqddm_sample(model, known=tokens, mask=missing, generator=0).tokens          # inpainting
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import torch

from vqfast import random as _random
from vqfast.diffusion import q_sample
from vqfast.ops import posterior_sample
from vqfast.models.vqddm.denoiser import VQDDM
from vqfast.ops import sample_logits
from vqfast.progress import progress_bar

METHODS = ("mixture", "gumbel")
_CHUNK = 256  # rows per log-normalizer chunk: the scratch is _CHUNK x K floats


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


def _log_normalizer(flat: torch.Tensor) -> torch.Tensor:
    """logsumexp over K of flat [N, K] -> float32 [N], in row chunks (bounded scratch)."""
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for i in range(0, flat.shape[0], _CHUNK):
        out[i:i + _CHUNK] = torch.logsumexp(flat[i:i + _CHUNK].float(), dim=-1)
    return out


def mixture_step(logits: torch.Tensor, z_t: torch.Tensor, i: int, schedule, key: int) -> torch.Tensor:
    """z_{i-1} ~ q(z_{i-1} | z_i, softmax(logits)) for the uniform transition (eq. 21) by the
    three-component mixture of the module doc. logits [B, ..., K], z_t [B, ...] int64, i in 2..T
    of `schedule` (a CosineSchedule or a strided one) -> z_{i-1} [B, ...] int64."""
    K = logits.shape[-1]
    flat, z = logits.reshape(-1, K), z_t.reshape(-1)
    a, ab = float(schedule.alpha[i]), float(schedule.alpha_bar[i - 1])
    p_z = (flat.gather(1, z[:, None])[:, 0].float() - _log_normalizer(flat)).double().exp()
    c = (1.0 - a) / K
    keep = a * (ab * p_z + (1.0 - ab) / K)
    uniform_mass, model_mass = c * (1.0 - ab), c * ab
    g = torch.Generator().manual_seed(key >> 1)  # O(B * L) draws: torch's generator is cheaper than Philox here
    r = torch.rand(z.numel(), generator=g, dtype=torch.float64).to(z.device) * (keep + uniform_mass + model_mass)
    out = torch.where(r < keep, z, torch.randint(K, (z.numel(),), generator=g).to(z.device))
    from_model = (r >= keep + uniform_mass).nonzero()[:, 0]
    if from_model.numel():
        out[from_model] = sample_logits(flat[from_model], seed=_random.step_key(key, 1))
    return out.reshape(z_t.shape)


class VQDDMSample(NamedTuple):
    """`vqddm_sample`: tokens int64 [B, h, w] (or known's shape); history int64 [S + 1, B, ...]
    (z at tau_S = T, ..., tau_0 = 0; the last is tokens) when asked with return_history, else None."""

    tokens: torch.Tensor
    history: torch.Tensor | None = None


def _check(model, batch_size, known, mask):
    if not isinstance(model, VQDDM):
        raise TypeError(f"model must be a VQDDM, got {type(model).__name__}")
    K, s = model.codebook_size, model.size
    if (known is None) != (mask is None):
        raise ValueError("known and mask go together (inpainting): pass both or neither")
    if known is not None:
        if not isinstance(known, torch.Tensor) or known.dtype != torch.int64 or known.shape[1:] not in \
                ((s, s), (s * s,)) or known.shape[0] < 1:
            raise ValueError(f"known must be int64 [B >= 1, {s}, {s}] or [B, {s * s}], got "
                             f"{getattr(known, 'dtype', None)} {tuple(getattr(known, 'shape', ()))}")
        if int(known.min()) < 0 or int(known.max()) >= K:
            raise ValueError(f"known must lie in [0, K) = [0, {K})")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != known.shape:
            raise ValueError(f"mask must be a bool tensor of known's shape {tuple(known.shape)} (True = missing), "
                             f"got {getattr(mask, 'dtype', None)} {tuple(getattr(mask, 'shape', ()))}")
        if batch_size not in (None, known.shape[0]):
            raise ValueError(f"batch_size={batch_size} disagrees with known's batch {known.shape[0]}")
        return known.shape[0], tuple(known.shape[1:])
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size, (s, s)


@torch.no_grad()
def vqddm_sample(model: VQDDM, *, batch_size: int | None = None, steps: int | None = None,
                 known: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 class_labels: torch.Tensor | None = None, generator: torch.Generator | int | None = None,
                 backend: str = "auto", progress: bool = False, return_history: bool = False,
                 method: str = "mixture") -> VQDDMSample:
    """Reverse process from uniform noise -> VQDDMSample(tokens int64 [B, h, w] (or known's shape), history).

    model: a VQDDM (its `schedule`, T steps); batch_size: maps to generate (with known: None or
    known's batch); steps: None (all T) or the number of strided steps; known [B, h, w] int64 +
    mask (bool, True = missing = generated) for inpainting; class_labels [B] for a
    class-conditional model; generator: torch.Generator, int seed or None; backend: of the fused
    ops; progress: a tqdm bar over the steps; return_history: also the map after every step;
    method: "mixture" | "gumbel" (see the module doc; both exact, different draws).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    B, shape = _check(model, batch_size, known, mask)
    schedule, K = model.schedule, model.codebook_size
    device = next(model.parameters()).device
    taus = timesteps(schedule.T, steps)
    sched = strided_schedule(schedule, taus)
    key = _random.philox_key(generator)
    g = torch.Generator().manual_seed(_random.step_key(key, -1) >> 1)
    z = torch.randint(K, (B, *shape), generator=g).to(device)
    if known is not None:
        known, missing = known.to(device), mask.to(device)
        z = torch.where(missing, z, q_sample(known, schedule.T, schedule, seed=_random.step_key(key, -2),
                                             num_classes=K))
    history = [z.clone()] if return_history else None
    bar = progress_bar(sched.T, "vqddm", progress, unit="step")
    for i in range(sched.T, 0, -1):
        tau, tau_prev = sched.taus[i], sched.taus[i - 1]
        t = torch.full((B,), tau, dtype=torch.long, device=device)
        logits = model(z, t, class_labels)
        if i > 1 and method == "mixture":
            z = mixture_step(logits, z, i, sched, _random.step_key(key, tau))
        elif i > 1:
            z = posterior_sample(logits, z, i, sched, seed=_random.step_key(key, tau), backend=backend)
        else:  # decoder p(z0 | z_tau1) = Cat(softmax(logits)) (eq. 22)
            z = sample_logits(logits, seed=_random.step_key(key, tau), backend=backend)
        if known is not None:
            again = known if tau_prev == 0 else q_sample(known, tau_prev, schedule,
                                                         seed=_random.step_key(key, -3 - tau_prev), num_classes=K)
            z = torch.where(missing, z, again)
        if return_history:
            history.append(z.clone())
        bar.update(1)
    bar.close()
    return VQDDMSample(z, torch.stack(history) if return_history else None)
