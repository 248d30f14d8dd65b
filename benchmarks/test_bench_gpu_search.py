"""GPU rows for the quantization kernels (Triton and CUDA); skipped without a CUDA device.

Each row times one backend of an op on CUDA tensors and, in the same test, its
baselines with CUDA events (median of ROUNDS after a warm-up), so every ratio in
extra_info comes from one run:
  nearest_code  N=16384, K=1024, d=256: vs torch addmm+argmin (norms + GEMM, the best
                plain-torch form), torch.cdist+argmin, and the GEMM ceiling (fraction of
                the device's matmul FLOP/s for 2*N*K*d in the same dtype)
  dual          same rows, half visible in contiguous runs: vs one nearest_code
  residual      D=4, K=16384: vs D separate nearest_code calls plus gathers

    python -m pytest benchmarks/test_bench_gpu_search.py --benchmark-only
"""
from __future__ import annotations

import os

import pytest
import torch

import vqfast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROUNDS = int(os.environ.get("VQFAST_GPU_BENCH_ROUNDS", "10"))
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
GPU_BACKENDS = ["triton", "cuda"]


def cuda_time(fn) -> float:
    """Median seconds of fn() over ROUNDS, CUDA events, after one warm-up call."""
    fn()
    times = []
    for _ in range(ROUNDS):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return sorted(times)[len(times) // 2]


def addmm_argmin(x, cb):
    """Best plain-torch nearest code: ||c||^2 - 2 x.c through one GEMM, then argmin."""
    return torch.addmm((cb.float() ** 2).sum(1), x.float(), cb.float().T, alpha=-2).argmin(1)


def inputs(n, k, d, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(n, d, device="cuda", generator=g).to(dtype),
            torch.randn(k, d, device="cuda", generator=g).to(dtype))


def skip_unavailable(backend):
    if not vqfast.backends()[backend]["available"]:
        pytest.skip(f"{backend} backend not available: {vqfast.backends()[backend]['detail']}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nearest_code_gpu(benchmark, backend, dtype):
    skip_unavailable(backend)
    n, k, d = 16384, 1024, 256
    x, cb = inputs(n, k, d, dtype)
    run = lambda: vqfast.ops.nearest_code(x, cb, backend=backend)  # noqa: E731
    t = cuda_time(run)
    a, b = torch.randn(4096, 4096, device="cuda", dtype=dtype), torch.randn(4096, 4096, device="cuda", dtype=dtype)
    gemm_flops = 2 * 4096 ** 3 / cuda_time(lambda: a @ b)
    benchmark.group = f"gpu nearest_code {str(dtype).split('.')[-1]}"
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(), seconds=t,
        speedup_vs_addmm_argmin=cuda_time(lambda: addmm_argmin(x, cb)) / t,
        speedup_vs_cdist_argmin=cuda_time(lambda: torch.cdist(x.float(), cb.float()).argmin(1)) / t,
        fraction_of_gemm_rate=(2 * n * k * d / t) / gemm_flops)
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_dual_codebook_gpu(benchmark, backend):
    skip_unavailable(backend)
    n, k, d = 16384, 512, 256
    x, e = inputs(n, k, d, torch.bfloat16)
    _, e2 = inputs(1, k, d, torch.bfloat16, seed=1)
    visible = (torch.arange(n, device="cuda") // 1024) % 2 == 0  # masks cover whole regions
    run = lambda: vqfast.ops.dual_codebook_quantize(x, visible, e, e2, backend=backend)  # noqa: E731
    t = cuda_time(run)
    benchmark.group = "gpu dual_codebook_quantize bf16"
    benchmark.extra_info.update(
        seconds=t, ratio_to_one_nearest_code=t / cuda_time(lambda: vqfast.ops.nearest_code(x, e, backend=backend)))
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_residual_gpu(benchmark, backend):
    skip_unavailable(backend)
    n, k, d, depth = 8192, 16384, 256, 4
    x, cb = inputs(n, k, d, torch.float32)
    run = lambda: vqfast.ops.residual_quantize(x, cb, depth, backend=backend)  # noqa: E731

    def separate_calls():
        r = x
        for _ in range(depth):
            idx, _ = vqfast.ops.nearest_code(r, cb, backend=backend)
            r = r - cb[idx]

    t = cuda_time(run)
    benchmark.group = "gpu residual_quantize fp32"
    benchmark.extra_info.update(seconds=t, speedup_vs_depth_calls=cuda_time(separate_calls) / t)
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
