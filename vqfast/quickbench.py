"""`python -m vqfast bench --quick`: each op's time per backend beside its reference
and the machine's fp32 GEMM ceiling, all measured in this run. Ratios, not absolute
times, are what compare across machines."""
from __future__ import annotations

import time
from typing import Callable

import torch

from vqfast import _backend
from vqfast import ops
from vqfast.ops.dual_codebook import HAS as DUAL_HAS
from vqfast.ops.ema import HAS as EMA_HAS
from vqfast.ops.nearest_code import HAS as NEAREST_CODE_HAS
from vqfast import diffusion
from vqfast.ops.residual import HAS as RESIDUAL_HAS
from vqfast.ops.sampling import HAS as SAMPLING_HAS


def median_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def gemm_flops(n: int = 1024, dtype=torch.float32) -> float:
    """Measured FLOP/s of an n x n x n matmul: the machine's ceiling for GEMM-bound ops."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / median_time(lambda: a @ b)


def _cases(quick: bool):
    """(op name, backends it has, flops, {backend: callable}) for each benchmarked op."""
    n, k, d = (4096, 512, 128) if quick else (16384, 1024, 256)
    x, cb = torch.randn(n, d), torch.randn(k, d)
    yield ("nearest_code", NEAREST_CODE_HAS, 2 * n * k * d,
           lambda b: (lambda: ops.nearest_code(x, cb, backend=b)), f"N={n} K={k} d={d}")
    xb, cbb = x.bfloat16(), cb.bfloat16()
    yield ("nearest_code bf16", NEAREST_CODE_HAS, 2 * n * k * d,
           lambda b: (lambda: ops.nearest_code(xb, cbb, backend=b)), f"N={n} K={k} d={d}")
    yield ("quantize", NEAREST_CODE_HAS, 2 * n * k * d,
           lambda b: (lambda: ops.quantize(x, cb, backend=b)), f"N={n} K={k} d={d}")
    visible, e2 = torch.rand(n) < 0.6, torch.randn(k, d)
    yield ("dual_codebook", DUAL_HAS, 2 * n * k * d,
           lambda b: (lambda: ops.dual_codebook_quantize(x, visible, cb, e2, backend=b)), f"N={n} K=K2={k} d={d}")
    rn, depth, rk = (512, 4, 2048) if quick else (2048, 4, 16384)
    xr, cbr = x[:rn], torch.randn(rk, d)
    yield ("residual", RESIDUAL_HAS, 2 * rn * rk * d * depth,
           lambda b: (lambda: ops.residual_quantize(xr, cbr, depth, backend=b)), f"N={rn} D={depth} K={rk} d={d}")
    idx = torch.randint(0, k, (n,))
    yield ("ema_statistics", EMA_HAS, 0,
           lambda b: (lambda: ops.ema_statistics(x, idx, k, backend=b)), f"N={n} K={k} d={d}")


def _diffusion_cases(quick: bool):
    """posterior_sample and vlb_kl forward+backward (vqfast.diffusion) at a VQ-DDM-like size."""
    b, l, k = (8, 256, 1024) if quick else (8, 1024, 4096)
    sched = diffusion.CosineSchedule(4000)
    x, z, x0 = torch.randn(b, l, k), torch.randint(0, k, (b, l)), torch.randint(0, k, (b, l))
    t = torch.randint(1, 4001, (b,))
    yield ("posterior_sample", diffusion.HAS, 0,
           lambda be: (lambda: diffusion.posterior_sample(x, z, t, sched, seed=0, backend=be)), f"B={b} L={l} K={k}")

    def vlb(be):
        def step():
            xg = x.detach().requires_grad_(True)
            diffusion.vlb_kl(x0, xg, z, t, sched, backend=be).sum().backward()
        return step
    yield ("vlb_kl fwd+bwd", diffusion.HAS, 0, vlb, f"B={b} L={l} K={k}")


def _sampling_cases(quick: bool):
    """The token samplers (DESIGN.md ops 7-9) at a MaskGIT-like size, 3 * randn logits."""
    b, l, v = (8, 256, 1024) if quick else (8, 1024, 16384)
    x = 3 * torch.randn(b, l, v)
    masked = torch.rand(b, l) < 0.5
    n = masked.sum(1) // 2
    shape = f"B={b} L={l} V={v}"
    yield ("gumbel_topk_select", SAMPLING_HAS, 0,
           lambda be: (lambda: ops.gumbel_topk_select(x, masked, n, 4.5, "sample", seed=0, backend=be)), shape)
    yield ("select_and_sample_topk", SAMPLING_HAS, 0,
           lambda be: (lambda: ops.select_and_sample_topk(x, masked, 50, seed=0, backend=be)), shape)
    yield ("sample_logits top-k", SAMPLING_HAS, 0,
           lambda be: (lambda: ops.sample_logits(x, 1.0, top_k=50, seed=0, backend=be)), shape)


def run(quick: bool = True) -> list[dict]:
    """Time every op on every usable CPU backend; returns rows and prints a table."""
    ceiling = gemm_flops()
    rows = []
    for name, has, flops, make, shape in (*_cases(quick), *_diffusion_cases(quick), *_sampling_cases(quick)):
        ref_t = median_time(make("reference"), repeats=3)
        for b in ("reference",) + tuple(h for h in has if h == "cpu" and _backend.backends()["cpu"]["available"]):
            t = ref_t if b == "reference" else median_time(make(b))
            rows.append({"op": name, "shape": shape, "backend": b, "ms": 1e3 * t,
                         "speedup_vs_reference": ref_t / t,
                         "fraction_of_gemm": flops / t / ceiling if flops else float("nan")})
    print(f"machine fp32 GEMM: {ceiling / 1e9:.1f} GFLOP/s, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'op':<24}{'shape':<26}{'backend':<11}{'ms':>9}{'x ref':>8}{'of GEMM':>9}")
    for r in rows:
        print(f"{r['op']:<24}{r['shape']:<26}{r['backend']:<11}{r['ms']:>9.2f}"
              f"{r['speedup_vs_reference']:>8.1f}{r['fraction_of_gemm']:>9.2f}")
    return rows
