"""nearest_code / quantize against every plain-torch and peer way.

Rows (N = 16384 rows, K = 1024 codes, d = 256; fp32 unless named), timed in one run,
interleaved round-robin over 3 input sets; extra_info holds the median, min, max and
the ratios of the vqfast rows to each baseline:
  gemm / gemm_bf16   torch.mm of [N, d] x [d, K]: the machine's GEMM ceiling for 2 N K d
  vqfast             vqfast.ops.nearest_code (C++ CPU kernel); _fp16, _bf16 inputs
  quantize           vqfast.ops.quantize (search + gather fused)
  cdist              torch.cdist(x, C).argmin(1)
  addmm              norms + torch.addmm + argmin (the best plain-torch formulation)
  faiss              faiss-cpu IndexFlatL2.search(x, k=1)
  vqp                vector-quantize-pytorch VectorQuantize (eval mode) forward
  reference          vqfast.reference.nearest_code (float64), timed on N/16 rows, scaled
The big case (N = 65536, K = 16384, d = 256; the N x K fp32 distances alone would take
4 GiB) runs once in a fresh process that reports its peak RSS.

    python -m pytest benchmarks/test_bench_nearest_code.py --benchmark-only -s
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import torch

import vqfast
from vqfast.reference import nearest_code as ref

sys.path.insert(0, os.path.dirname(__file__))
from timing import gemm_seconds, interleaved, machine  # noqa: E402

N, K, D = (int(v) for v in os.environ.get("NC_BENCH_SHAPE", "16384,1024,256").split(","))
BIG = tuple(int(v) for v in os.environ.get("NC_BENCH_BIG", "65536,16384,256").split(","))
REF_ROWS = N // 64
FLOPS = 2 * N * K * D


@functools.lru_cache(maxsize=None)
def _inputs():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(N, D, generator=g) for _ in range(3)], torch.randn(K, D, generator=g)


def _rows() -> dict:
    xs, cb = _inputs()
    xs16 = {dt: [x.to(dt) for x in xs] for dt in (torch.float16, torch.bfloat16)}
    cb16 = {dt: cb.to(dt) for dt in (torch.float16, torch.bfloat16)}
    c_sq = cb.square().sum(1)
    rows = {
        "gemm": gemm_seconds(N, K, D),
        "gemm_bf16": gemm_seconds(N, K, D, torch.bfloat16),
        "vqfast": lambda i: vqfast.ops.nearest_code(xs[i], cb),
        "vqfast_fp16": lambda i: vqfast.ops.nearest_code(xs16[torch.float16][i], cb16[torch.float16]),
        "vqfast_bf16": lambda i: vqfast.ops.nearest_code(xs16[torch.bfloat16][i], cb16[torch.bfloat16]),
        "quantize": lambda i: vqfast.ops.quantize(xs[i], cb),
        "cdist": lambda i: torch.cdist(xs[i], cb).argmin(1),
        "addmm": lambda i: torch.addmm(c_sq, xs[i], cb.T, alpha=-2).argmin(1),
        "reference": lambda i: ref.nearest_code(xs[i][:REF_ROWS], cb),
    }
    try:
        import faiss
        faiss.omp_set_num_threads(torch.get_num_threads())
        index = faiss.IndexFlatL2(D)
        index.add(cb.numpy())
        rows["faiss"] = lambda i: index.search(xs[i].numpy(), 1)
    except ImportError:
        pass
    try:
        from vector_quantize_pytorch import VectorQuantize
        vqp = VectorQuantize(dim=D, codebook_size=K).eval()
        vqp._codebook.embed.data.copy_(cb[None])
        rows["vqp"] = lambda i: vqp(xs[i][None])
    except ImportError:
        pass
    return rows


@functools.lru_cache(maxsize=None)
def _measure() -> dict:
    t = interleaved(_rows(), slow=("reference", "cdist"))
    t["reference"] = {k: v * N / REF_ROWS for k, v in t["reference"].items()}  # scaled to N rows
    return t


def _info(name: str) -> dict:
    t = _measure()
    med = {k: v["median"] for k, v in t.items()}
    info = {"median_ms": 1e3 * med[name], "min_ms": 1e3 * t[name]["min"], "max_ms": 1e3 * t[name]["max"],
            "N": N, "K": K, "d": D, "GFLOPs": FLOPS / med[name] / 1e9, **machine()}
    if name.startswith(("vqfast", "quantize")):
        info["fraction_of_fp32_gemm"] = med["gemm"] / med[name]
        info["fraction_of_bf16_gemm"] = med["gemm_bf16"] / med[name]
        info["speedup_vs_fp32_vqfast"] = med["vqfast"] / med[name]
        for base in ("cdist", "addmm", "faiss", "vqp", "reference"):
            if base in med:
                info[f"speedup_vs_{base}"] = med[base] / med[name]
    return info


NAMES = ["gemm", "gemm_bf16", "vqfast", "vqfast_fp16", "vqfast_bf16", "quantize", "cdist", "addmm", "faiss", "vqp",
         "reference"]


@pytest.mark.benchmark(group=f"nearest_code N={N} K={K} d={D}")
@pytest.mark.parametrize("name", NAMES)
def test_bench_nearest_code(benchmark, name):
    if name not in _measure():
        pytest.skip(f"{name}: peer library not installed")
    benchmark.extra_info.update(_info(name))
    fn = _rows()[name]
    with torch.no_grad():
        benchmark.pedantic(fn, args=(0,), rounds=1, warmup_rounds=0)
    print(f"\n{name:<12} {benchmark.extra_info['median_ms']:9.2f} ms  " + "  ".join(
        f"{k}={v:.2f}" for k, v in benchmark.extra_info.items() if k.startswith(("speedup", "fraction"))))


_BIG_SCRIPT = """
import json, resource, sys, time, torch, vqfast
n, k, d = map(int, sys.argv[1:4])
g = torch.Generator().manual_seed(0)
x, cb = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
vqfast.ops.nearest_code(x[:64], cb)  # load the extension, first-call allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
vqfast.ops.nearest_code(x, cb)
sec = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": sec, "rss_before_MiB": before, "peak_rss_MiB": peak}))
"""


@pytest.mark.benchmark(group=f"nearest_code big N={BIG[0]} K={BIG[1]} d={BIG[2]}")
def test_bench_nearest_code_big(benchmark):
    """One run in a fresh process: time and peak RSS (the plain-torch way needs N*K*4 bytes more)."""
    n, k, d = BIG
    result = {}

    def run():
        out = subprocess.run([sys.executable, "-c", _BIG_SCRIPT, str(n), str(k), str(d)], capture_output=True,
                             text=True, check=True)
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    gemm = gemm_seconds(4096, k, d)
    gemm_s = interleaved({"gemm": gemm}, rounds=3)["gemm"]["median"] * n / 4096
    benchmark.extra_info.update({
        "N": n, "K": k, "d": d, "median_ms": 1e3 * result["seconds"], "GFLOPs": 2 * n * k * d / result["seconds"] / 1e9,
        "fraction_of_fp32_gemm": gemm_s / result["seconds"], "peak_rss_MiB": result["peak_rss_MiB"],
        "extra_rss_MiB": result["peak_rss_MiB"] - result["rss_before_MiB"],
        "distance_matrix_MiB": n * k * 4 / 2 ** 20, **machine()})
    print(f"\nbig: {result['seconds']:.1f} s, peak RSS {result['peak_rss_MiB']:.0f} MiB "
          f"(+{benchmark.extra_info['extra_rss_MiB']:.0f} MiB during the search; "
          f"an N x K fp32 matrix is {n * k * 4 / 2 ** 30:.1f} GiB)")
