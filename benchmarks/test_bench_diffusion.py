"""Discrete-diffusion posterior (DESIGN.md op 10): the fused CPU kernels beside their baselines.

Rows per (B, L, K), all in one run:
  copy       logits copied into a preallocated buffer: the machine's copy bandwidth;
             "read once" = half a copy
  reference  vqfast.reference.diffusion (float64, every [B, L, K] tensor; small sizes only)
  chain      multinomial-diffusion-style log-space posterior (Hoogeboom et al.; VQ-DDM's
             official code copies it): float32 [B, K, L] log one-hots, q_pred, one-step
             q_pred, logsumexp, Gumbel noise from torch.rand, autograd for the VLB backward
  cpu        vqfast.diffusion on the C++ kernels (one read of the logits per position)
for posterior_sample and vlb_kl forward+backward. extra_info of the cpu rows holds the
speedups over chain and reference and the time as a multiple of reading the logits once
(posterior_sample) or of one copy (vlb_kl fwd+bwd: it reads the logits twice and writes
the gradient once).

    python -m pytest benchmarks/test_bench_diffusion.py --benchmark-only
    DIFFUSION_BENCH_FULL=1 ...   # adds B=8 L=1024 K=16384 (needs ~8 GB for the chain)
"""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

import vqfast.diffusion as D
from vqfast import backends
from vqfast.reference import diffusion as ref
from timing import machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

B, T = 8, 4000
SIZES = [(256, 1024), (1024, 1024), (256, 16384)]
if os.environ.get("DIFFUSION_BENCH_FULL") == "1":
    SIZES.append((1024, 16384))
REFERENCE_MAX = 1 << 23  # the float64 reference holds ~10 [B, L, K] tensors: small sizes only
SCHED = D.CosineSchedule(T)
_TIMES: dict[tuple, float] = {}


class MultinomialChain:
    """The multinomial-diffusion log-space posterior as the anchors write it ([B, K, L], float32)."""

    def __init__(self, sched, K: int):
        log_alpha = sched.alpha[1:].log()
        log_cum = torch.cumsum(log_alpha, 0)
        self.K = K
        self.log_alpha, self.log_cum = log_alpha.float(), log_cum.float()
        self.log_1m_alpha = torch.log(-torch.expm1(log_alpha) + 1e-40).float()
        self.log_1m_cum = torch.log(-torch.expm1(log_cum) + 1e-40).float()

    def log_onehot(self, z):
        return F.one_hot(z, self.K).permute(0, 2, 1).float().clamp(min=1e-30).log()

    def q_posterior(self, log_x0, log_xt, t):  # t 0-indexed (= vqfast's t - 1)
        tm1 = (t - 1).clamp(min=0)[:, None, None]
        prev = torch.logaddexp(log_x0 + self.log_cum[tm1], self.log_1m_cum[tm1] - math.log(self.K))
        prev = torch.where(t[:, None, None] == 0, log_x0, prev)
        tt = t[:, None, None]
        step = torch.logaddexp(log_xt + self.log_alpha[tt], self.log_1m_alpha[tt] - math.log(self.K))
        unnormed = prev + step
        return unnormed - torch.logsumexp(unnormed, dim=1, keepdim=True)

    def sample(self, logits, z_t, t):
        log_probs = self.q_posterior(F.log_softmax(logits, 1), self.log_onehot(z_t), t - 1)
        u = torch.rand_like(log_probs)
        return (-torch.log(-torch.log(u + 1e-30) + 1e-30) + log_probs).argmax(1)

    def vlb(self, x0, logits, z_t, t):
        log_x0, log_xt = self.log_onehot(x0), self.log_onehot(z_t)
        log_true = self.q_posterior(log_x0, log_xt, t - 1)
        log_model = self.q_posterior(F.log_softmax(logits, 1), log_xt, t - 1)
        kl = (log_true.exp() * (log_true - log_model)).sum(1)
        nll = -(log_x0.exp() * log_model).sum(1)
        return torch.where((t - 1)[:, None] == 0, nll, kl)


def _inputs(L, K, n_sets, layout):
    g = torch.Generator().manual_seed(L * K)
    sets = []
    for _ in range(n_sets):
        x = torch.randn(B, L, K, generator=g) * 2
        if layout == "BKL":
            x = x.permute(0, 2, 1).contiguous()
        sets.append((x, torch.randint(0, K, (B, L), generator=g), torch.randint(0, K, (B, L), generator=g),
                     torch.randint(1, T + 1, (B,), generator=g)))
    return sets


def _make(op, impl, L, K):
    """A zero-argument callable rotating over input sets, for one row."""
    n_sets = 3 if B * L * K <= (1 << 25) else 1
    sets = _inputs(L, K, n_sets, "BKL" if impl == "chain" else "BLK")
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % len(sets)
        return sets[state["i"]]

    if impl == "copy":  # into a preallocated buffer: page faults of a fresh allocation are not bandwidth
        buf = torch.empty_like(sets[0][0])
        return lambda: buf.copy_(nxt()[0])
    if op == "posterior_sample":
        if impl == "reference":
            return lambda: ref.posterior_sample(*_args3(nxt()), SCHED, 1)
        if impl == "chain":
            chain = MultinomialChain(SCHED, K)
            return lambda: chain.sample(*_args3(nxt()))
        return lambda: D.posterior_sample(*_args3(nxt()), SCHED, seed=1, backend=impl)

    chain = MultinomialChain(SCHED, K)

    def vlb():
        x, z, x0, t = nxt()
        xg = x.detach().requires_grad_(True)
        if impl == "reference":
            loss = ref.vlb_kl(x0, xg, z, t, SCHED)
        elif impl == "chain":
            loss = chain.vlb(x0, xg, z, t)
        else:
            loss = D.vlb_kl(x0, xg, z, t, SCHED, backend=impl)
        loss.sum().backward()
        return xg.grad
    return vlb


def _args3(s):
    x, z, _, t = s
    return x, z, t


ROWS = [(op, L, K, impl) for op in ("posterior_sample", "vlb_kl_fwd_bwd") for (L, K) in SIZES
        for impl in ("copy", "chain", "reference", "cpu")]


@pytest.mark.parametrize("op, L, K, impl", [pytest.param(*r, id=f"{r[0]}-B{B}-L{r[1]}-K{r[2]}-{r[3]}") for r in ROWS])
def test_bench_diffusion(benchmark, op, L, K, impl):
    if impl == "reference" and B * L * K > REFERENCE_MAX:
        pytest.skip("float64 reference too large for this size")
    if impl == "cpu" and not backends()["cpu"]["available"]:
        pytest.skip("cpu backend not built")
    benchmark.group = f"{op} B={B} L={L} K={K}"
    fn = _make(op, impl, L, K)
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    t = benchmark.stats.stats.median
    _TIMES[(op, L, K, impl)] = t
    info = {**machine(), "median_s": t, "logit_bytes": B * L * K * 4}
    if impl == "copy":
        info["copy_GBps"] = 2 * B * L * K * 4 / t / 1e9
    if impl == "cpu":
        copy = _TIMES.get((op, L, K, "copy"))
        for base in ("chain", "reference"):
            if (op, L, K, base) in _TIMES:
                info[f"speedup_vs_{base}"] = _TIMES[(op, L, K, base)] / t
        if copy:
            info["x_read_once"] = t / (copy / 2)
            info["x_copy"] = t / copy
    benchmark.extra_info.update(info)
