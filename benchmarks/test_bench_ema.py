"""EMA codebook step: vqfast's one-pass statistics vs the plain-torch ways.

Rows (N = 65536 rows, K = 1024 codes, d = 256, fp32 unless named), all timed in one run,
interleaved round-robin over 3 input sets so that load from other processes hits every
row alike; each row's extra_info holds its median and its ratio to the baselines:
  copy          y.copy_(x): the machine's copy bandwidth (STREAM convention: bytes read +
                written); reading x once at that bandwidth takes copy_time / 2. Timed
                just before vq_forward: the row after copy pays for its 64 MiB of
                dirty lines, which is ~1% of vq_forward's time
  read          x.sum(): torch's fastest read of x (no writes). No one-pass kernel can beat
                it, so index_add / read bounds any kernel's speedup over index_add:
                `index_add_over_read` (3.0-4.9 at 2 threads on the 2-core dev VM, varying
                from process to process with where x lands in memory: one core nearly
                saturates the memory, while index_add_ scales with the cores)
  vqfast        vqfast.ops.ema_statistics (CPU kernel), also fp16/bf16 x
  index_add     torch.bincount + zeros(K, d).index_add_ (the best plain-torch formulation)
  one_hot       one_hot(idx).T @ x and .sum(0), as PUT / rq-vae-transformer /
                vector-quantize-pytorch do it (N x K fp32 one-hot)
  step          ema_statistics + ema_update_ (the whole EMA step)
  separate      nearest_code + ema_statistics (search, then a second pass over x) vs
  fused         nearest_code_with_statistics (the same results, x read once)
  vq_forward    vqfast VectorQuantizer training forward (search + EMA step) vs
  vqp_forward   vector-quantize-pytorch VectorQuantize training forward, same N, K, d, decay

    python -m pytest benchmarks/test_bench_ema.py --benchmark-only -s
"""
from __future__ import annotations

import functools
import os
import time

import pytest
import torch
import torch.nn.functional as F

import vqfast
from vqfast.quantizers import VectorQuantizer
from timing import machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

N, K, D = (int(v) for v in os.environ.get("EMA_BENCH_SHAPE", "65536,1024,256").split(","))
ROUNDS = int(os.environ.get("EMA_BENCH_ROUNDS", "7"))
if os.environ.get("VQFAST_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["VQFAST_BENCH_THREADS"]))


@functools.lru_cache(maxsize=None)
def _inputs():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g)) for _ in range(3)]


@functools.lru_cache(maxsize=None)
def _rows():
    """name -> (fn(x, idx), dtype of x) for every timed row."""
    out = torch.empty(N, D)
    n, s = torch.ones(K), torch.zeros(K, D)
    vq = VectorQuantizer(D, K, decay=0.8).train()
    cb = torch.randn(K, D, generator=torch.Generator().manual_seed(1))
    stats = lambda x, i: vqfast.ops.ema_statistics(x, i, K)  # noqa: E731
    rows = {
        "vqfast": (stats, torch.float32),
        "vqfast_fp16": (stats, torch.float16),
        "vqfast_bf16": (stats, torch.bfloat16),
        "index_add": (lambda x, i: (torch.bincount(i, minlength=K).float(), torch.zeros(K, D).index_add_(0, i, x)),
                      torch.float32),
        "one_hot": (lambda x, i: (lambda oh: (oh.sum(0), oh.T @ x))(F.one_hot(i, K).float()), torch.float32),
        "step": (lambda x, i: vqfast.ops.ema_update_(n, s, *stats(x, i), 0.99, 1e-5), torch.float32),
        "separate": (lambda x, i: stats(x, vqfast.ops.nearest_code(x, cb)[0]), torch.float32),
        "fused": (lambda x, i: vqfast.ops.nearest_code_with_statistics(x, cb), torch.float32),
        "copy": (lambda x, i: out.copy_(x), torch.float32),
        "vq_forward": (lambda x, i: vq(x), torch.float32),
    }
    try:
        from vector_quantize_pytorch import VectorQuantize
        vqp = VectorQuantize(dim=D, codebook_size=K, decay=0.8, commitment_weight=0.25).train()
        rows["vqp_forward"] = (lambda x, i: vqp(x[None]), torch.float32)
    except ImportError:
        pass
    rows["read"] = (lambda x, i: x.sum(), torch.float32)
    return rows


_RESULTS: dict[str, float] = {}


def _measure() -> dict[str, float]:
    """Median seconds of every row, interleaved round-robin (computed once per run)."""
    if _RESULTS:
        return _RESULTS
    data = _inputs()
    by_dtype = {dt: [(x.to(dt), i) for x, i in data] for dt in (torch.float32, torch.float16, torch.bfloat16)}
    rows = _rows()
    times = {name: [] for name in rows}
    with torch.no_grad():
        for name, (fn, dt) in rows.items():  # warm-up
            fn(*by_dtype[dt][0])
        for r in range(ROUNDS):
            for j, (name, (fn, dt)) in enumerate(rows.items()):
                if name == "one_hot" and r >= 3:  # ~100x slower than the rest: 3 rounds suffice
                    continue
                # Each row reads another input set than the row before it (x is 64 MiB, L3
                # 32 MiB): no row finds part of its x left in cache by the previous one.
                x, i = by_dtype[dt][(r + j) % 3]
                t0 = time.perf_counter()
                fn(x, i)
                times[name].append(time.perf_counter() - t0)
    _RESULTS.update({name: sorted(t)[len(t) // 2] for name, t in times.items()})
    return _RESULTS


def _info(name: str) -> dict:
    t = _measure()
    read_once = t["copy"] / 2
    info = {"median_ms": 1e3 * t[name], "N": N, "K": K, "d": D, **machine(),
            "copy_GBps": 2 * N * D * 4 / t["copy"] / 1e9, "read_x_once_ms": 1e3 * read_once}
    if name.startswith("vqfast") or name == "step":
        info["speedup_vs_index_add"] = t["index_add"] / t[name]
        info["speedup_vs_one_hot"] = t["one_hot"] / t[name]
        info["x_read_once_at_copy_bw"] = t[name] / read_once
        info["time_vs_torch_read"] = t[name] / t["read"]
        info["index_add_over_read"] = t["index_add"] / t["read"]
    if name == "fused":
        info["speedup_vs_separate"] = t["separate"] / t[name]
    if name == "vq_forward" and "vqp_forward" in t:
        info["speedup_vs_vector_quantize_pytorch"] = t["vqp_forward"] / t[name]
    return info


NAMES = ["copy", "read", "vqfast", "vqfast_fp16", "vqfast_bf16", "index_add", "one_hot", "step", "separate", "fused",
         "vq_forward", "vqp_forward"]


@pytest.mark.benchmark(group=f"ema N={N} K={K} d={D}")
@pytest.mark.parametrize("name", NAMES)
def test_bench_ema(benchmark, name):
    t = _measure()
    if name not in t:
        pytest.skip(f"{name}: peer library not installed")
    benchmark.extra_info.update(_info(name))
    fn, dt = _rows()[name]
    x, i = _inputs()[0]
    with torch.no_grad():
        benchmark.pedantic(fn, args=(x.to(dt), i), rounds=1 if name == "one_hot" else 3, warmup_rounds=1)
    print(f"\n{name:<12} {1e3 * t[name]:9.2f} ms  " + "  ".join(
        f"{k}={v:.2f}" for k, v in benchmark.extra_info.items() if k.startswith(("speedup", "x_read", "time_vs"))))
