"""Oracle for discrete diffusion (DESIGN.md op 10; VQ-DDM seed Sec. 3.1, eqs. 15-24).

Clear log-space PyTorch in float64 that builds every [B, L, K] tensor. Transitions:

- "uniform" (multinomial diffusion, VQ-DDM): Q_t = alpha_t I + (1 - alpha_t) / K (eq. 16),
  q(z_t | x0) = abar_t x0 + (1 - abar_t) / K (eq. 17), states 0..K-1.
- "absorbing" (mask, D3PM / VQ-Diffusion without the uniform part): a token stays with
  probability alpha_t or becomes the mask state K, which never leaves;
  q(z_t | x0) = abar_t x0 + (1 - abar_t) e_K. States 0..K (K = mask); x0 is a
  distribution over the K real tokens only.

Posterior (eqs. 20-21): q(z_{t-1} = k | z_t, x0) ~ Q_t[k, z_t] * q(z_{t-1} = k | x0), where x0
is a one-hot (truth) or the model's predicted distribution softmax(log_x0). For the
absorbing kind an unmasked z_t is kept: the posterior is one-hot at z_t whatever x0 says.
"""
from __future__ import annotations

import torch

from vqfast.reference import random as rnd

TRANSITIONS = ("uniform", "absorbing")
STREAM_POSTERIOR = 16  # vqfast._random.STREAM_DIFFUSION + 0: Gumbel noise, element (b*L + l) * K' + k
STREAM_Q_KEEP = 17  # q_sample: uniform per position deciding keep vs resample / mask
STREAM_Q_TOKEN = 18  # q_sample: word per position picking the uniform replacement token


def num_states(K: int, transition: str) -> int:
    """Number of states of z_t: K (uniform) or K + 1 (absorbing, the last is the mask)."""
    return K + 1 if transition == "absorbing" else K


def _rows(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Schedule values at t [B] -> float64 [B, 1, 1] for broadcasting over [B, L, K]."""
    return v.to(t.device)[t].reshape(-1, 1, 1)


def log_q_prev(y: torch.Tensor, t: torch.Tensor, schedule, transition: str) -> torch.Tensor:
    """log q(z_{t-1} = k | x0) for x0 = exp(y) (y [B, L, K] normalized log-probs) -> [B, L, K']."""
    ab = _rows(schedule.alpha_bar, t - 1)
    K = y.shape[-1]
    if transition == "uniform":
        return torch.logaddexp(y + ab.log(), ((1 - ab) / K).log().expand_as(y))
    mask = (1 - ab).log().expand(*y.shape[:-1], 1)
    return torch.cat([y + ab.log(), mask], dim=-1)


def log_step(z_t: torch.Tensor, t: torch.Tensor, schedule, K: int, transition: str) -> torch.Tensor:
    """log Q_t[k, z_t] = log q(z_t | z_{t-1} = k) as a function of k -> [B, L, K']."""
    a = _rows(schedule.alpha, t)
    states = torch.arange(num_states(K, transition), device=z_t.device)
    same = states == z_t[..., None]
    if transition == "uniform":
        return torch.where(same, (a + (1 - a) / K).log(), ((1 - a) / K).log())
    # absorbing: k -> k with alpha_t, real k -> mask with 1 - alpha_t, mask -> mask with 1.
    to_mask = (z_t == K)[..., None]
    real_k = states < K
    stay = torch.where(same & real_k, a.log(), torch.full_like(a, -torch.inf))
    return torch.where(to_mask, torch.where(real_k, (1 - a).log(), torch.zeros_like(a)), stay)


def posterior_logprobs(log_x0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, schedule,
                       transition: str = "uniform") -> torch.Tensor:
    """log q(z_{t-1} | z_t, x0) (eqs. 20-21), float64.

    log_x0 [B, L, K] logits or log-probs of x0, z_t [B, L] int64, t [B] int64 in 1..T
    -> [B, L, K'] (K' = K, or K + 1 for "absorbing").
    """
    y = torch.log_softmax(log_x0.double(), dim=-1)
    K = y.shape[-1]
    u = log_q_prev(y, t, schedule, transition) + log_step(z_t, t, schedule, K, transition)
    out = u - torch.logsumexp(u, dim=-1, keepdim=True)
    if transition == "absorbing":
        kept = torch.full_like(out, -torch.inf).scatter_(-1, z_t[..., None], 0.0)
        out = torch.where((z_t < K)[..., None], kept, out)
    return out


def posterior_sample(log_x0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, schedule, key: int,
                     transition: str = "uniform") -> torch.Tensor:
    """z_{t-1} [B, L] int64: Gumbel-max over the posterior log-probs (rounded to float32,
    plus float32 Gumbel noise of stream STREAM_POSTERIOR); ties go to the lowest state."""
    lp = posterior_logprobs(log_x0, z_t, t, schedule, transition).float()
    g = rnd.gumbel_grid(key, STREAM_POSTERIOR, tuple(lp.shape), device=lp.device)
    return (lp + g).argmax(dim=-1)


def vlb_kl(x0: torch.Tensor, log_x0_pred: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, schedule,
           transition: str = "uniform") -> torch.Tensor:
    """KL(q(z_{t-1} | z_t, x0) || q(z_{t-1} | z_t, softmax(log_x0_pred))) per position (eq. 24), float64.

    x0 [B, L] int64 true tokens, log_x0_pred [B, L, K] -> [B, L]. At t = 1 the true
    posterior is one-hot at x0, so this is -log p(x0 | z_1) of the model's posterior.
    Differentiable in log_x0_pred by autograd.
    """
    K = log_x0_pred.shape[-1]
    onehot = torch.full(log_x0_pred.shape, -torch.inf, dtype=torch.float64, device=x0.device)
    lq = posterior_logprobs(onehot.scatter_(-1, x0[..., None], 0.0), z_t, t, schedule, transition)
    lp = posterior_logprobs(log_x0_pred, z_t, t, schedule, transition)
    q = lq.exp()
    kl = torch.where(q > 0, q * (lq - lp), torch.zeros_like(q)).sum(-1)
    if transition == "absorbing":  # unmasked positions: both posteriors are one-hot at z_t
        kl = torch.where(z_t < K, torch.zeros_like(kl), kl)
    return kl


def q_sample(z0: torch.Tensor, t: torch.Tensor, schedule, K: int, key: int,
             transition: str = "uniform") -> torch.Tensor:
    """z_t ~ q(z_t | z0) (eq. 17) for z0 [B, L] int64, t [B] in 0..T -> [B, L] int64.

    Per position n = b*L + l: keep z0 when uniform(STREAM_Q_KEEP, n) < float32(abar_t), else
    the mask K ("absorbing") or the token (w * K) >> 32 with w = word(STREAM_Q_TOKEN, n)
    ("uniform": a uniform draw that may equal z0, as eq. 17 says).
    """
    n = torch.arange(z0.numel(), device=z0.device).reshape(z0.shape)
    keep = rnd.uniform(key, STREAM_Q_KEEP, n) < schedule.alpha_bar.to(torch.float32).to(z0.device)[t][:, None]
    if transition == "absorbing":
        other = torch.full_like(z0, K)
    else:
        other = (rnd.words(key, STREAM_Q_TOKEN, n) * K) >> 32
    return torch.where(keep, z0, other)
