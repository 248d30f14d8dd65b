"""k-means: 25 Lloyd iterations on P = 100k, d = 256, K = 1024, fp32.

Rows, all from the same random init and measured in one run:
  vqfast        vqfast.kmeans (one nearest_code_with_statistics pass per iteration)
  torch_lloyd   a plain-torch Lloyd loop: chunked addmm distances + argmin, bincount + index_add_
  faiss         faiss.Kmeans(d, K, niter) (its own init; same iteration count)
  pass_pair     one nearest_code pass + one ema_statistics pass over the same data: the
                floor a k-means iteration is measured against (target: within 1.3x)
  fused_pass    one nearest_code_with_statistics pass (what an iteration runs)
  afkmc2        AFK-MC2 seeding alone (chain length 200, VQ-DDM)
extra_info: per-iteration ms and the ratios.

    python -m pytest benchmarks/test_bench_kmeans.py --benchmark-only -s
"""
from __future__ import annotations

import functools
import os
import time

import pytest
import torch

import vqfast
from vqfast.quantizers.clustering import afkmc2

P, D, K = (int(v) for v in os.environ.get("KMEANS_BENCH_SHAPE", "100000,256,1024").split(","))
ITERS = int(os.environ.get("KMEANS_BENCH_ITERS", "25"))
if os.environ.get("VQFAST_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["VQFAST_BENCH_THREADS"]))


@functools.lru_cache(maxsize=None)
def _data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4 * K, D, generator=g)
    x = centers[torch.randint(0, 4 * K, (P,), generator=g)] + 0.5 * torch.randn(P, D, generator=g)
    return x, x[torch.randperm(P, generator=g)[:K]].clone()


def torch_lloyd(x: torch.Tensor, c: torch.Tensor, iters: int, chunk: int = 8192) -> torch.Tensor:
    """Plain-torch Lloyd (what a user writes without vqfast)."""
    for _ in range(iters):
        c_sq = c.square().sum(1)
        idx = torch.cat([torch.addmm(c_sq, xc, c.T, alpha=-2).argmin(1) for xc in x.split(chunk)])
        counts = torch.bincount(idx, minlength=c.shape[0]).float()
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
    return c


def _faiss(x, c, iters):
    import faiss
    km = faiss.Kmeans(D, K, niter=iters, seed=1, max_points_per_centroid=P // K + 1)
    km.train(x.numpy())
    return km


def _rows():
    x, c = _data()
    rows = {
        "vqfast": lambda: vqfast.kmeans(x, K, ITERS, init=c),
        "torch_lloyd": lambda: torch_lloyd(x, c, ITERS),
        "pass_pair": lambda: vqfast.ops.ema_statistics(x, vqfast.ops.nearest_code(x, c)[0], K),
        "fused_pass": lambda: vqfast.ops.nearest_code_with_statistics(x, c),
        "afkmc2": lambda: afkmc2(x, K, 200, torch.Generator().manual_seed(0)),
    }
    try:
        import faiss  # noqa: F401
        rows["faiss"] = lambda: _faiss(x, c, ITERS)
    except ImportError:
        pass
    return rows


_RESULTS: dict[str, float] = {}


def _measure() -> dict[str, float]:
    """Seconds per row (median of 3 for the cheap single passes, one run otherwise), interleaved."""
    if _RESULTS:
        return _RESULTS
    rows = _rows()
    rows["pass_pair"]()  # warm-up: extension load, allocations
    times = {name: [] for name in rows}
    for r in range(3):
        for name, fn in rows.items():
            if r and name not in ("pass_pair", "fused_pass"):
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    _RESULTS.update({name: sorted(t)[len(t) // 2] for name, t in times.items()})
    return _RESULTS


@pytest.mark.benchmark(group=f"kmeans P={P} d={D} K={K} iters={ITERS}")
@pytest.mark.parametrize("name", ["vqfast", "torch_lloyd", "faiss", "pass_pair", "fused_pass", "afkmc2"])
def test_bench_kmeans(benchmark, name):
    t = _measure()
    if name not in t:
        pytest.skip(f"{name}: not installed")
    # vqfast.kmeans runs ITERS updates plus one final assignment pass
    per_iter = {"vqfast": t["vqfast"] / (ITERS + 1), "torch_lloyd": t["torch_lloyd"] / ITERS,
                "faiss": t.get("faiss", float("nan")) / ITERS, "pass_pair": t["pass_pair"],
                "fused_pass": t["fused_pass"]}
    info = {"seconds": t[name], "P": P, "d": D, "K": K, "iters": ITERS, "load_avg_1min": os.getloadavg()[0],
            "threads": torch.get_num_threads()}
    if name in per_iter:
        info["per_iter_ms"] = 1e3 * per_iter[name]
    if name == "vqfast":
        info["per_iter_vs_pass_pair"] = per_iter["vqfast"] / per_iter["pass_pair"]
        info["per_iter_vs_fused_pass"] = per_iter["vqfast"] / per_iter["fused_pass"]
        info["speedup_vs_torch_lloyd"] = per_iter["torch_lloyd"] / per_iter["vqfast"]
        info["speedup_vs_faiss"] = per_iter["faiss"] / per_iter["vqfast"]
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: None, rounds=1)  # timed above, interleaved with its baselines
    print(f"\n{name:<12} {t[name]:8.2f} s  " + "  ".join(f"{k}={v:.2f}" for k, v in info.items()
                                                        if k.startswith(("per_iter", "speedup"))))
