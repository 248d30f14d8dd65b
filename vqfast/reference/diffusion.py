"""Oracle for discrete diffusion (VQ-DDM Sec. 3.1, eqs. 15-24).

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

from vqfast import random as vr
from vqfast.diffusion.schedule import num_states, sample_coefficients
from vqfast.random import STREAM_POSTERIOR
from vqfast.reference import random as rnd


def _rows(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Schedule values at t [B] -> float64 [B, 1, 1] for broadcasting over [B, L, K]."""
    return v.to(t.device)[t].reshape(-1, 1, 1)


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """logaddexp whose gradient is 0, not NaN, where both terms are -inf (a -inf logit at t = 1)."""
    dead = (a == -torch.inf) & (b == -torch.inf)
    out = torch.logaddexp(a.masked_fill(dead, 0.0), b.masked_fill(dead, 0.0))
    return out.masked_fill(dead, -torch.inf)


def _log_normalize(u: torch.Tensor) -> torch.Tensor:
    """u - logsumexp(u) over the last dim; a row of -inf stays -inf with a zero gradient."""
    dead = (u == -torch.inf).all(-1, keepdim=True)
    safe = u.masked_fill(dead, 0.0)
    return (safe - torch.logsumexp(safe, dim=-1, keepdim=True)).masked_fill(dead, -torch.inf)


def log_q_prev(y: torch.Tensor, t: torch.Tensor, schedule, transition: str) -> torch.Tensor:
    """log q(z_{t-1} = k | x0) for x0 = exp(y) (y [B, L, K] normalized log-probs) -> [B, L, K']."""
    ab = _rows(schedule.alpha_bar, t - 1)
    K = y.shape[-1]
    if transition == "uniform":
        return _logaddexp(y + ab.log(), ((1 - ab) / K).log().expand_as(y))
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
    out = _log_normalize(u)
    if transition == "absorbing":
        kept = torch.full_like(out, -torch.inf).scatter_(-1, z_t[..., None], 0.0)
        out = torch.where((z_t < K)[..., None], kept, out)
    return out


def _trial_words(key: int, rows: torch.Tensor, trial: int, j: int) -> tuple[torch.Tensor, ...]:
    blk = (rows << 8) + 3 * trial + j
    return vr.philox4x32(blk & 0xFFFFFFFF, blk >> 32, STREAM_POSTERIOR, 0, key)


def posterior_sample(log_x0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, schedule, key: int,
                     transition: str = "uniform") -> torch.Tensor:
    """z_{t-1} [B, L] int64 drawn from q(z_{t-1} | z_t, softmax(log_x0)) without its [K] log-probs.

    q(k) ~ E_k (ab p_k + ck) (uniform; E_k = E1 at k = z_t, else E0) or c p_k / m at the mask
    (absorbing, z_t masked; unmasked z_t is kept). With p_k = w_k / W, w_k = e^(x_k - max x),
    the categorical proposal of `random.proposal_blocks` (w_k 2^23 <= M w'_k, sum w' = S)
    bounds the three parts: "spike" ab E1 w'_zt (accept z_t with the proposal's test),
    "rest" ab E0 S' (a proposal draw with z_t's weight removed, accepted by its test) and
    "uniform" ck (E0 (K-1) + E1) S (z_t with probability E1 / (E0 (K-1) + E1), else a uniform
    other state; accepted when a proposal trial accepts, which happens with probability
    W 2^23 / (M S)). Each accepted part contributes exactly its share of q, so accepted
    draws follow q. Trial j of flat position n uses Philox blocks (n << 8) + 3j + {0, 1, 2}
    of stream STREAM_POSTERIOR: (part, block, id, accept), (z_t-or-other, other id),
    (the uniform part's proposal trial); float32 part masses
    ((spike + rest) + uniform) * u compared in that order; trial 63 accepts.
    """
    B, L, K = log_x0.shape
    N = B * L
    x = log_x0.reshape(N, K).to(torch.float32)
    bad = torch.isnan(x).any(-1) | (x == torch.inf).any(-1) | (x == -torch.inf).all(-1)
    x = torch.where(bad[:, None], torch.zeros_like(x), x)  # the caller reports such rows
    zt = z_t.reshape(N)
    coef = sample_coefficients(schedule, t, K, transition).repeat_interleave(L, 0)
    m, mb, what, s, s_hat = rnd.proposal_blocks(x)
    uniform = transition == "uniform"
    rows = torch.arange(N, device=x.device)
    # the proposal without z_t (uniform kind): one block changes
    bz, iz = (zt.clamp_max(K - 1) // rnd.CAT_BLOCK), zt.clamp_max(K - 1) % rnd.CAT_BLOCK
    w_zt = what[rows, bz, iz] if uniform else torch.zeros_like(zt)
    what_x = what.clone()
    what_x[rows, bz, iz] -= w_zt
    s_x = s.clone()
    s_x[rows, bz] -= w_zt
    s_hat_x = s_hat.clone()
    s_hat_x[rows, bz] = rnd.block_weight(s_x[rows, bz], m, mb[rows, bz])
    f32 = torch.float32
    spike = coef[:, 0] * ((s_hat[rows, bz].to(f32) * w_zt.to(f32)) / s[rows, bz].to(f32).clamp_min(1))
    rest = coef[:, 1] * s_hat_x.sum(-1).to(f32)
    unif = coef[:, 2] * s_hat.sum(-1).to(f32)
    out = torch.where(uniform | (zt == K), -1, zt)
    todo = rows[out < 0]
    for trial in range(rnd.CAT_TRIALS):
        r = todo
        a0, a1, a2, a3 = _trial_words(key, r, trial, 0)
        b0, b1, _, _ = _trial_words(key, r, trial, 1)
        c0, c1, c2, _ = _trial_words(key, r, trial, 2)
        u = vr.uniform_from_words(a0) * ((spike[r] + rest[r]) + unif[r])
        part = torch.where(u < spike[r], 0, torch.where(u < spike[r] + rest[r], 1, 2))
        k_rest, ok_rest = rnd.proposal_trial(x[r], m[r], what_x[r], s_x[r], s_hat_x[r], a1, a2, a3)
        z = zt[r]
        # spike: accept z_t with the proposal's test at z_t
        lhs = ((vr.uniform_from_words(a3) * rnd._f32(rnd._ACCEPT_MARGIN)) * s_hat[r, bz[r]].to(f32)) * w_zt[r].to(f32)
        rhs = (rnd.exp_f32(x[r, z.clamp_max(K - 1)] - m[r]) * rnd._f32(2.0 ** 23)) * s[r, bz[r]].to(f32)
        ok_spike = lhs < rhs
        if uniform:
            other = (b1 * (K - 1)) >> 32
            k_unif = torch.where(vr.uniform_from_words(b0) < coef[r, 3], z, other + (other >= z).long())
        else:
            k_unif = torch.full_like(z, K)
        ok_unif = rnd.proposal_trial(x[r], m[r], what[r], s[r], s_hat[r], c0, c1, c2)[1]
        k = torch.where(part == 0, z, torch.where(part == 1, k_rest, k_unif))
        ok = torch.where(part == 0, ok_spike, torch.where(part == 1, ok_rest, ok_unif)) | (trial == rnd.CAT_TRIALS - 1)
        out[r[ok]] = k[ok]
        todo = r[~ok]
        if todo.numel() == 0:
            break
    return out.reshape(B, L)


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
    live = q > 0  # lp is masked where q = 0 too: 0 * (-inf) would be a NaN gradient
    kl = (q * (lq - lp.masked_fill(~live, 0.0))).masked_fill(~live, 0.0).sum(-1)
    if transition == "absorbing":  # unmasked positions: both posteriors are one-hot at z_t
        kl = torch.where(z_t < K, torch.zeros_like(kl), kl)
    return kl

