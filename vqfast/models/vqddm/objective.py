"""VQ-DDM training objective: the VLB (eq. 7) with importance-sampled timesteps, in bits/dim.

For x0 [B, L] tokens and one timestep t per sample (t in 1..T; vqfast's t = 1 is the
official code's t = 0):

    L_t = sum_l KL(q(z_{t-1} | z_t, x0) || p(z_{t-1} | z_t))   t >= 2 (eq. 24, fused `vlb_kl`)
    L_1 = -sum_l log p(x0 | z_1),  p(z0 | z1) = Cat(z0 | softmax(logits))   (eq. 22, the decoder)
          or, decoder_term="posterior" (the official code's), p(z0 | z1) = N[softmax(logits) *
          (alpha_1 onehot(z_1) + (1 - alpha_1) / K)]: eq. 20-21's posterior at t = 1 with z0 -> z0^.
          The paper's reported NLL (bits/dim) is the official code's loss, so the posterior form.
    prior = sum_l KL(q(z_T | x0) || Cat(1/K))                        (closed form, no network)
    loss  = mean_b (L_t / p(t) + prior) / (L ln 2)                   bits per dimension

with z_t ~ q(z_t | x0) (eq. 17) and p(t) from `ImportanceSampler`: uniform until every t
has more than 10 recorded losses, then p(t) ~ sqrt(E[L_t^2]) + 1e-4 with a per-t EMA
E[L_t^2] <- 0.9 E[L_t^2] + 0.1 L_t^2 (the official multinomial-diffusion / VQ-DDM code,
including its tie of the decoder term's weight to t = 2's). The estimate is unbiased for
the VLB whatever p(t) is.

`VQDDM.loss` is the entry point (it runs `vlb_estimate` on the model's schedule and
records the batch in the sampler):

    sampler = ImportanceSampler(model.T)
    out = model.loss(x0, generator=g, sampler=sampler)     # LossOutput: out.total, out.terms["bpd"]
    out.total.backward()
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vqfast.diffusion import q_sample
from vqfast.ops import vlb_kl


class ImportanceSampler:
    """Timestep sampler with p(t) ~ sqrt(E[L_t^2]) + eps over t = 1..T (Nichol & Dhariwal, official VQ-DDM).

    history [T+1] float64 (index t; entry 0 unused): EMA of L_t^2; count [T+1] int64.
    `tie_decoder=True` (the official code) gives t = 1 (the decoder term) t = 2's weight.
    """

    def __init__(self, T: int, *, min_count: int = 10, decay: float = 0.9, eps: float = 1e-4,
                 tie_decoder: bool = True):
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T must be an int >= 1, got {T!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.T, self.min_count, self.decay, self.eps, self.tie_decoder = T, min_count, decay, eps, tie_decoder
        self.history = torch.zeros(T + 1, dtype=torch.float64)
        self.count = torch.zeros(T + 1, dtype=torch.int64)

    @property
    def warm(self) -> bool:
        """True once every t in 1..T has more than min_count losses: p(t) is then non-uniform."""
        return bool((self.count[1:] > self.min_count).all())

    def probs(self) -> torch.Tensor:
        """p(t) float64 [T] for t = 1..T (uniform until warm)."""
        if not self.warm:
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        w = torch.sqrt(self.history[1:] + 1e-10) + self.eps
        if self.tie_decoder and self.T > 1:
            w[0] = w[1]
        return w / w.sum()

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (t int64 [batch] in 1..T, p(t) float64 [batch]); CPU tensors."""
        if not self.warm:
            t = torch.randint(1, self.T + 1, (batch,), generator=generator)
        else:
            t = torch.multinomial(self.probs(), batch, replacement=True, generator=generator) + 1
        return t, self.probs()[t - 1]

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Fold per-sample losses L_t [B] (nats, summed over positions) at timesteps t [B] into the
        EMA of L_t^2 and the counts. Repeated t in a batch are folded in batch order (the official
        code's scatter keeps one of them)."""
        t, sq = t.detach().cpu().long(), losses.detach().cpu().double() ** 2
        if t.shape != sq.shape or t.dim() != 1:
            raise ValueError(f"t and losses must both be [B], got {tuple(t.shape)} and {tuple(sq.shape)}")
        if t.numel() and (int(t.min()) < 1 or int(t.max()) > self.T):
            raise ValueError(f"t must lie in 1..T = 1..{self.T}")
        for ti, li in zip(t.tolist(), sq.tolist()):
            self.history[ti] = self.decay * self.history[ti] + (1 - self.decay) * li
            self.count[ti] += 1

    def state_dict(self) -> dict:
        return {"history": self.history.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict) -> None:
        if state["history"].shape != self.history.shape:
            raise ValueError(f"state is for T={state['history'].numel() - 1}, sampler has T={self.T}")
        self.history.copy_(state["history"]), self.count.copy_(state["count"])


def prior_kl(schedule, K: int, L: int) -> float:
    """sum over L positions of KL(q(z_T | x0) || Cat(1/K)) in nats (the same for every x0)."""
    a = float(schedule.alpha_bar[-1])
    hit, miss = a + (1 - a) / K, (1 - a) / K
    kl = hit * math.log(hit * K) + ((K - 1) * miss * math.log(miss * K) if miss > 0 else 0.0)
    return L * kl


DECODER_TERMS = ("eq22", "posterior")


def decoder_log_probs(logits: torch.Tensor, z_1: torch.Tensor, schedule, decoder_term: str) -> torch.Tensor:
    """log p(z0 | z1) [..., K] from x0 logits [..., K] and z_1 [...] (see the module doc)."""
    if decoder_term not in DECODER_TERMS:
        raise ValueError(f"decoder_term must be one of {DECODER_TERMS}, got {decoder_term!r}")
    log_x0 = F.log_softmax(logits.float(), -1)
    if decoder_term == "eq22":
        return log_x0
    K, a = logits.shape[-1], float(schedule.alpha[1])
    q_step = F.one_hot(z_1, K).float() * a + (1 - a) / K  # q(z_1 | z_0 = k) for every k
    return torch.log_softmax(log_x0 + q_step.log(), -1)


def timestep_losses(model, x0: torch.Tensor, t: torch.Tensor, schedule, *, key: int,
                    class_labels: torch.Tensor | None = None,
                    decoder_term: str = "eq22") -> tuple[torch.Tensor, torch.Tensor]:
    """L_t per sample (nats, summed over positions; differentiable) and z_t.

    x0 [B, ...] int64 tokens in [0, K), t [B] int64 in 1..T; z_t ~ q(z_t | x0) from Philox `key`;
    decoder_term: the t = 1 term, "eq22" or "posterior" (module doc).
    """
    K = model.codebook_size
    z_t = q_sample(x0, t, schedule, seed=key, num_classes=K)
    logits = model(z_t, t, class_labels)
    B = x0.shape[0]
    per_sample = vlb_kl(x0, logits, z_t, t, schedule).reshape(B, -1).sum(1)
    first = t == 1
    if bool(first.any()):  # decoder term: -log p(x0 | z_1)
        log_p = decoder_log_probs(logits[first].reshape(-1, K), z_t[first].reshape(-1), schedule, decoder_term)
        nll = F.nll_loss(log_p, x0[first].reshape(-1), reduction="none")
        per_sample = per_sample.masked_scatter(first, nll.reshape(int(first.sum()), -1).sum(1))
    return per_sample, z_t


class VLBEstimate(NamedTuple):
    """One VLB estimate: loss (bits/dim, differentiable scalar), t int64 [B] (CPU), pt float64 [B]
    (p(t)), L_t float32 [B] (detached, nats, CPU), z_t (the noised tokens), prior (nats per map)."""

    loss: torch.Tensor
    t: torch.Tensor
    pt: torch.Tensor
    L_t: torch.Tensor
    z_t: torch.Tensor
    prior: float


def vlb_estimate(model, x0: torch.Tensor, schedule, sampler: ImportanceSampler | None = None, *, key: int,
                 class_labels: torch.Tensor | None = None, decoder_term: str = "eq22") -> VLBEstimate:
    """The computation behind `VQDDM.loss` (which checks its arguments): x0 [B, h, w] or [B, L]
    int64; t ~ p(t) of `sampler` (None: uniform) and z_t from the 64-bit Philox `key`. The
    sampler is not updated."""
    B, L = x0.shape[0], x0[0].numel()
    if sampler is None:
        sampler = ImportanceSampler(schedule.T)  # cold: uniform
    g = torch.Generator().manual_seed(key & ((1 << 63) - 1))
    t, pt = sampler.sample(B, g)
    t = t.to(x0.device)
    L_t, z_t = timestep_losses(model, x0, t, schedule, key=key, class_labels=class_labels,
                               decoder_term=decoder_term)
    prior = prior_kl(schedule, model.codebook_size, L)
    per_sample = L_t / pt.to(L_t.device, torch.float32) + prior
    loss = per_sample.mean() / (L * math.log(2))
    return VLBEstimate(loss, t.cpu(), pt, L_t.detach().float().cpu(), z_t, prior)
