"""GPU rows for the EMA, sampling and diffusion kernels (Triton); skipped without a CUDA device.

Each row times the kernel and, in the same test, what a user would run instead in plain torch
and the device's memory bandwidth (a device-to-device copy of the op's main input), with CUDA
events (median of ROUNDS after a warm-up):
  ema_statistics      N=65536, K=1024, d=256: vs index_add_ (+ bincount) and a one-hot matmul
  sample_logits       B*L=8192 rows, V=16384: vs softmax + multinomial (plain, top-k 50, top-p 0.9)
  gumbel_topk_select  B=8, L=1024, V=16384: vs log_softmax + max + gumbel + topk
  posterior_sample    B=8, L=256, K=16384: vs the dense posterior (log-space) + multinomial
The ratio `time_vs_read` is the kernel's time over one read of its logits at the copy's rate.

    python -m pytest benchmarks/test_bench_gpu_ops.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch

import vqfast
from vqfast.diffusion import CosineSchedule
from vqfast.ops import posterior_sample

from test_bench_gpu_search import ROUNDS, cuda_time, skip_unavailable  # noqa: E402  (benchmarks/ is on sys.path under pytest)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def read_seconds(t: torch.Tensor) -> float:
    """Seconds to read t once at the device's copy bandwidth (a copy reads and writes t)."""
    out = torch.empty_like(t)
    return cuda_time(lambda: out.copy_(t)) / 2


def record(benchmark, group, run, t, baselines: dict, x: torch.Tensor):
    benchmark.group = group
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), seconds=t, time_vs_read=t / read_seconds(x),
                                **{f"speedup_vs_{k}": cuda_time(fn) / t for k, fn in baselines.items()})
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)


def test_ema_statistics_gpu(benchmark):
    skip_unavailable("triton")
    n, k, d = 65536, 1024, 256
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=g)
    idx = torch.randint(0, k, (n,), device="cuda", generator=g)
    run = lambda: vqfast.ops.ema_statistics(x, idx, k, backend="triton")  # noqa: E731

    def index_add():
        return torch.bincount(idx, minlength=k), torch.zeros(k, d, device="cuda").index_add_(0, idx, x)

    def one_hot():
        oh = torch.nn.functional.one_hot(idx, k).float()
        return oh.sum(0), oh.T @ x

    record(benchmark, "gpu ema_statistics fp32", run, cuda_time(run), {"index_add": index_add, "one_hot": one_hot}, x)


@pytest.mark.parametrize("kw", [{}, {"top_k": 50}, {"top_p": 0.9}], ids=["plain", "top_k50", "top_p0.9"])
def test_sample_logits_gpu(benchmark, kw):
    skip_unavailable("triton")
    x = torch.randn(8192, 16384, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1)) * 3
    run = lambda: vqfast.ops.sample_logits(x, seed=0, backend="triton", **kw)  # noqa: E731

    def torch_chain():
        y = x
        if "top_k" in kw:
            v, _ = y.topk(kw["top_k"], -1)
            y = y.masked_fill(y < v[:, -1:], float("-inf"))
        if "top_p" in kw:
            s, i = y.sort(-1, descending=True)
            drop = s.softmax(-1).cumsum(-1) - s.softmax(-1) > kw["top_p"]
            y = y.scatter(-1, i, s.masked_fill(drop, float("-inf")))
        return torch.multinomial(y.softmax(-1), 1)

    record(benchmark, f"gpu sample_logits {list(kw) or 'plain'}", run, cuda_time(run), {"torch": torch_chain}, x)


def test_gumbel_topk_select_gpu(benchmark):
    skip_unavailable("triton")
    B, L, V = 8, 1024, 16384
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(B, L, V, device="cuda", generator=g) * 3
    masked = torch.rand(B, L, device="cuda", generator=g) < 0.7
    n = masked.sum(1) // 4
    run = lambda: vqfast.ops.gumbel_topk_select(x, masked, n, 4.5, seed=0, backend="triton")  # noqa: E731

    def torch_chain():
        lp = x.log_softmax(-1)
        conf, tok = lp.max(-1)
        u = torch.rand(B, L, device="cuda").clamp_min(1e-20)
        conf = (conf - 4.5 * torch.log(-torch.log(u))).masked_fill(~masked, float("-inf"))
        return tok, conf.topk(int(n.max()), -1).indices

    record(benchmark, "gpu gumbel_topk_select", run, cuda_time(run), {"torch": torch_chain}, x)


def test_posterior_sample_gpu(benchmark):
    skip_unavailable("triton")
    B, L, K = 8, 256, 16384
    sched = CosineSchedule(4000)
    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(B, L, K, device="cuda", generator=g)
    z_t = torch.randint(0, K, (B, L), device="cuda", generator=g)
    t = torch.full((B,), 100, device="cuda")
    run = lambda: posterior_sample(x, z_t, t, sched, seed=0, backend="triton")  # noqa: E731
    a, abar_prev = float(sched.alpha[100]), float(sched.alpha_bar[99])

    def dense():
        # log q(z_{t-1} | z_t, x0) = log[a 1{z_t} + (1-a)/K] + log[abar_prev p(x0) + (1-abar_prev)/K] + const
        lhs = torch.full((B, L, K), (1 - a) / K, device="cuda").scatter_add_(
            -1, z_t[..., None], torch.full((B, L, 1), a, device="cuda")).log()
        rhs = torch.logaddexp(x.log_softmax(-1) + torch.log(torch.tensor(abar_prev)),
                              torch.tensor((1 - abar_prev) / K, device="cuda").log())
        return torch.multinomial((lhs + rhs).softmax(-1).view(-1, K), 1)

    record(benchmark, "gpu posterior_sample", run, cuda_time(run), {"dense": dense}, x)
