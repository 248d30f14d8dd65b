"""Discrete-diffusion posterior: the fused CPU kernels beside their baselines.

Rows per (op, B, L, K, threads), interleaved round-robin in one run (median of
DIFFUSION_BENCH_ROUNDS, default 5):
  read_once  torch.amax over the logits: reading them once (the issue's target unit)
  copy       logits copied into a preallocated buffer: the machine's copy bandwidth
  exp_ceiling one vectorized e^x per logit and a sum, nothing else (csrc/cpu/ceilings.cpp):
             the least time of an op that needs a softmax of the logits (vlb_kl; not the
             sampler, whose proposal needs no exp)
  reference  vqfast.reference.diffusion (float64, every [B, L, K] tensor) on 1 x 32
             positions, scaled to the full size
  chain      multinomial-diffusion-style log-space posterior (Hoogeboom et al.; VQ-DDM's
             official code copies it): float32 [B, K, L] log one-hots, q_pred, one-step
             q_pred, logsumexp, Gumbel noise from torch.rand, autograd for the VLB backward
  cpu        vqfast.ops (posterior ops) on the C++ kernels
for posterior_sample, vlb_kl forward alone (vlb_kl_fwd), its backward alone (vlb_kl_bwd:
the forward runs untimed, then loss.backward() is timed), both (vlb_kl_fwd_bwd) and the
backward of posterior_logprobs alone (logprobs_bwd, a fixed random upstream gradient; its
chain is autograd through the float32 log-space posterior), at DIFFUSION_BENCH_THREADS
(default "1,2") torch threads. extra_info of every row: x_read_once and x_copy (time / the
copy row's). Targets: x_read_once <= 1.5 for posterior_sample and vlb_kl_fwd, x_copy <= 1.5
for vlb_kl_bwd (it reads the logits and writes the gradient once). cpu rows add
speedup_vs_reference and speedup_vs_chain. Gradients are dropped after each call, as in a
training loop (the CPU kernels reuse their freed huge-page buffers).

    python -m pytest benchmarks/test_bench_diffusion.py --benchmark-only -s
    DIFFUSION_BENCH_FULL=1 ...   # adds B=8 L=1024 K=16384 (needs ~8 GB for the chain)
"""
from __future__ import annotations

import functools
import math
import os
import time

import pytest
import torch
import torch.nn.functional as F

import vqfast.diffusion as D
from vqfast import backends, ops
from vqfast.reference import diffusion as ref
from timing import machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

B, T = 8, 4000
SIZES = [(256, 1024), (1024, 1024), (256, 16384)]
if os.environ.get("DIFFUSION_BENCH_FULL") == "1":
    SIZES.append((1024, 16384))
THREADS = [int(v) for v in os.environ.get("DIFFUSION_BENCH_THREADS", "1,2").split(",")]
ROUNDS = int(os.environ.get("DIFFUSION_BENCH_ROUNDS", "5"))
REF_POS = 32  # the float64 reference runs on 1 x 32 positions, scaled to B x L
SCHED = D.CosineSchedule(T)


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
    """fn(i) running one row on input set i % n_sets."""
    n_sets = 3 if B * L * K <= (1 << 25) else 1
    sets = _inputs(L, K, n_sets, "BKL" if impl == "chain" else "BLK")
    if impl == "reference":  # a 1 x 32 slice, scaled in _measure
        sets = [tuple(v[:1, :REF_POS] if v.dim() >= 2 else v[:1] for v in s) for s in sets]

    def get(i):
        return sets[i % len(sets)]

    if impl == "read_once":
        return lambda i: torch.amax(get(i)[0], -1)
    if impl == "copy":  # into a preallocated buffer: page faults of a fresh allocation are not bandwidth
        buf = torch.empty_like(sets[0][0])
        return lambda i: buf.copy_(get(i)[0])
    if impl == "exp_ceiling":
        return lambda i: torch.ops.vqfast_bench.exp_sum_ceiling(get(i)[0].view(-1, K))
    if op == "posterior_sample":
        if impl == "reference":
            return lambda i: ref.posterior_sample(*_args3(get(i)), SCHED, 1)
        if impl == "chain":
            chain = MultinomialChain(SCHED, K)
            return lambda i: chain.sample(*_args3(get(i)))
        return lambda i: ops.posterior_sample(*_args3(get(i)), SCHED, seed=1, backend=impl)

    chain = MultinomialChain(SCHED, K)
    if op == "logprobs_bwd":
        upstream = torch.randn(B, L, K, generator=torch.Generator().manual_seed(1))
        if impl == "chain":
            upstream = upstream.permute(0, 2, 1).contiguous()
        elif impl == "reference":
            upstream = upstream[:1, :REF_POS]

        def logprobs_bwd(i):
            x, z, _, t = get(i)
            xg = x.detach().requires_grad_(True)
            if impl == "reference":
                out = ref.posterior_logprobs(xg, z, t, SCHED)
            elif impl == "chain":
                out = chain.q_posterior(F.log_softmax(xg, 1), chain.log_onehot(z), t - 1)
            else:
                out = ops.posterior_logprobs(xg, z, t, SCHED, backend=impl)
            t0 = time.perf_counter()
            (g,) = torch.autograd.grad(out, xg, upstream)
            return time.perf_counter() - t0
        return logprobs_bwd

    def vlb_loss(x, z, x0, t):
        if impl == "reference":
            return ref.vlb_kl(x0, x, z, t, SCHED)
        if impl == "chain":
            return chain.vlb(x0, x, z, t)
        return ops.vlb_kl(x0, x, z, t, SCHED, backend=impl)

    if op == "vlb_kl_fwd":
        return lambda i: vlb_loss(*get(i))

    if op == "vlb_kl_bwd":
        def vlb_bwd(i):
            x, z, x0, t = get(i)
            xg = x.detach().requires_grad_(True)
            loss = vlb_loss(xg, z, x0, t).sum()
            t0 = time.perf_counter()
            loss.backward()
            return time.perf_counter() - t0
        return vlb_bwd

    def vlb(i):
        x, z, x0, t = get(i)
        xg = x.detach().requires_grad_(True)
        vlb_loss(xg, z, x0, t).sum().backward()
    return vlb


def _args3(s):
    x, z, _, t = s
    return x, z, t


IMPLS = ("read_once", "copy", "exp_ceiling", "chain", "reference", "cpu")


@functools.lru_cache(maxsize=None)
def _measure(op: str, L: int, K: int, threads: int) -> dict:
    """Median seconds of every impl, interleaved round-robin (one warm-up call each)."""
    impls = [i for i in IMPLS if i not in ("cpu", "exp_ceiling") or backends()["cpu"]["available"]]
    fns = {i: _make(op, i, L, K) for i in impls}
    times: dict[str, list[float]] = {i: [] for i in impls}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for fn in fns.values():
            fn(0)
        for r in range(ROUNDS):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                inner = fn(r)  # backward rows time themselves (their forward is not counted)
                times[name].append(inner if isinstance(inner, float) else time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    scale = {"reference": B * L / min(L, REF_POS)}
    return {name: scale.get(name, 1) * sorted(t)[len(t) // 2] for name, t in times.items()}


OPS = ("posterior_sample", "vlb_kl_fwd", "vlb_kl_bwd", "vlb_kl_fwd_bwd", "logprobs_bwd")
ROWS = [(op, L, K, th, impl) for op in OPS for (L, K) in SIZES
        for th in THREADS for impl in IMPLS]


@pytest.mark.parametrize("op, L, K, threads, impl",
                         [pytest.param(*r, id=f"{r[0]}-B{B}-L{r[1]}-K{r[2]}-t{r[3]}-{r[4]}") for r in ROWS])
def test_bench_diffusion(benchmark, op, L, K, threads, impl):
    if impl in ("cpu", "exp_ceiling") and not backends()["cpu"]["available"]:
        pytest.skip("cpu backend not built")
    benchmark.group = f"{op} B={B} L={L} K={K} threads={threads}"
    med = _measure(op, L, K, threads)
    t = med[impl]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the timing is _measure's, stored below
    info = {**machine(), "threads": threads, "row": impl, "median_ms": 1e3 * t, "logit_bytes": B * L * K * 4,
            "x_read_once": t / med["read_once"], "x_copy": t / med["copy"]}
    if impl == "copy":
        info["copy_GBps"] = 2 * B * L * K * 4 / t / 1e9
    if impl == "cpu":
        info["speedup_vs_chain"] = med["chain"] / t
        info["speedup_vs_reference"] = med["reference"] / t
    benchmark.extra_info.update(info)
    print(f"\n{op:<18} L={L:<5} K={K:<6} t={threads} {impl:<10} {1e3 * t:9.2f} ms  x_read_once={t / med['read_once']:.2f}"
          f"  x_copy={t / med['copy']:.2f}"
          + (f"  vs_chain={info['speedup_vs_chain']:.1f}  vs_reference={info['speedup_vs_reference']:.1f}"
             if impl == "cpu" else ""))
