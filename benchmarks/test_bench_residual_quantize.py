"""residual_quantize (RQ-VAE): D levels fused vs D separate searches.

Rows (N = 2048 rows, D = 4 levels, K = 16384 shared codes, d = 256, the RQ-VAE
setting), one run, interleaved over 3 input sets; extra_info holds median/min/max and
ratios:
  residual          vqfast.ops.residual_quantize (C++ CPU kernel; residual kept per block)
  loop_nearest      D calls of vqfast.ops.nearest_code with the residual update in torch
  loop_addmm        D calls of norms + addmm + argmin with the residual update in torch
  reference         vqfast.reference.residual (D reference searches, float64), on N/16 rows, scaled
The issue-2 target is residual >= 2x over D reference calls.

    python -m pytest benchmarks/test_bench_residual_quantize.py --benchmark-only -s
"""
from __future__ import annotations

import functools
import os
import sys

import pytest
import torch

import vqfast
from vqfast.reference import residual as ref

sys.path.insert(0, os.path.dirname(__file__))
from timing import interleaved, machine  # noqa: E402

N, DEPTH, K, D = (int(v) for v in os.environ.get("RQ_BENCH_SHAPE", "2048,4,16384,256").split(","))
REF_ROWS = N // 64


@functools.lru_cache(maxsize=None)
def _inputs():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(N, D, generator=g) for _ in range(3)], torch.randn(K, D, generator=g)


def _loop(x, cb, search):
    r, total, idx = x, torch.zeros_like(x), []
    for _ in range(DEPTH):
        k = search(r, cb)
        c = cb[k]
        r, total = r - c, total + c
        idx.append(k)
    return total, torch.stack(idx, 1)


def _fns(i: int) -> dict:
    xs, cb = _inputs()
    c_sq = cb.square().sum(1)
    return {
        "residual": lambda: vqfast.ops.residual_quantize(xs[i], cb, DEPTH),
        "loop_nearest": lambda: _loop(xs[i], cb, lambda r, c: vqfast.ops.nearest_code(r, c)[0]),
        "loop_addmm": lambda: _loop(xs[i], cb, lambda r, c: torch.addmm(c_sq, r, c.T, alpha=-2).argmin(1)),
        "reference": lambda: ref.residual_quantize(xs[i][:REF_ROWS], cb, DEPTH),
    }


@functools.lru_cache(maxsize=None)
def _measure() -> dict:
    rows = {name: (lambda i, name=name: _fns(i)[name]()) for name in _fns(0)}
    t = interleaved(rows, rounds=3, slow=("reference",))
    t["reference"] = {k: v * N / REF_ROWS for k, v in t["reference"].items()}
    return t


@pytest.mark.benchmark(group=f"residual_quantize N={N} D={DEPTH} K={K} d={D}")
@pytest.mark.parametrize("name", ["residual", "loop_nearest", "loop_addmm", "reference"])
def test_bench_residual_quantize(benchmark, name):
    t = _measure()
    med = {k: v["median"] for k, v in t.items()}
    info = {"median_ms": 1e3 * med[name], "min_ms": 1e3 * t[name]["min"], "max_ms": 1e3 * t[name]["max"],
            "N": N, "depth": DEPTH, "K": K, "d": D, "GFLOPs": 2 * N * K * D * DEPTH / med[name] / 1e9, **machine()}
    if name == "residual":
        for base in ("loop_nearest", "loop_addmm", "reference"):
            info[f"speedup_vs_{base}"] = med[base] / med[name]
    benchmark.extra_info.update(info)
    with torch.no_grad():
        benchmark.pedantic(_fns(0)[name], rounds=1, warmup_rounds=0)
    print(f"\n{name:<12} {info['median_ms']:9.2f} ms  " + "  ".join(
        f"{k}={v:.2f}" for k, v in info.items() if k.startswith("speedup")))
