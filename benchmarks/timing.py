"""Timing helpers for the issue-2 search benchmarks (nearest_code, dual, residual).

The machine is shared and noisy, so every figure that is compared is timed in the
same run, interleaved round-robin over 3 input sets: load
from other processes then hits every row alike, and caches do not flatter a kernel.
"""
from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from typing import Callable, Sequence

import torch

ROUNDS = int(os.environ.get("VQFAST_BENCH_ROUNDS", "5"))


def machine() -> dict:
    """CPU model, threads, torch version, commit and load: stored with every result."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "commit": commit,
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def interleaved(rows: dict[str, Callable[[int], object]], rounds: int = ROUNDS,
                slow: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """rows: name -> fn(input_set) ; returns name -> {median, min, max} seconds.

    One warm-up call per row, then `rounds` round-robin passes over all rows, input set
    r % 3 in round r. Rows named in `slow` run 3 rounds at most.
    """
    times: dict[str, list[float]] = {name: [] for name in rows}
    with torch.no_grad():
        for fn in rows.values():
            fn(0)
        for r in range(rounds):
            for name, fn in rows.items():
                if name in slow and r >= 3:
                    continue
                t0 = time.perf_counter()
                fn(r % 3)
                times[name].append(time.perf_counter() - t0)
    return {name: {"median": sorted(t)[len(t) // 2], "min": min(t), "max": max(t)} for name, t in times.items()}


def sync(device: str | torch.device) -> None:
    """Waits for the device's queued kernels (CUDA timings); nothing on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def gemm_seconds(m: int, n: int, k: int, dtype=torch.float32, packed: bool = False,
                 device: str | torch.device = "cpu") -> Callable[[int], object]:
    """A row timing torch's own GEMM of the same shape: the machine's ceiling. packed (CPU): oneDNN's
    GEMM on a weight packed once (what vqfast.models.common.inference runs; MKL's torch.mm otherwise)."""
    g = torch.Generator().manual_seed(1)
    a = [torch.randn(m, k, generator=g).to(device, dtype) for _ in range(3)]
    b = torch.randn(k, n, generator=g).to(device, dtype)
    if packed:
        w = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), m)
        return lambda i: torch.ops.mkldnn._linear_pointwise(a[i], w, None, "none", [], "")
    out = torch.empty(m, n, dtype=dtype)
    return lambda i: torch.mm(a[i], b, out=out)


def gemm_rate(m: int, k: int, n: int, dtype: torch.dtype, packed: bool = False,
              device: str | torch.device = "cpu") -> tuple[float, float]:
    """(wall, process CPU-time) FLOP/s of an [m, k] x [k, n] matmul in dtype on device (medians of
    5 after a warm-up); packed as in gemm_seconds."""
    mm = gemm_seconds(m, n, k, dtype, packed, device)
    mm(0)
    walls, cpus = [], []
    for i in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        mm(i % 3)
        sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return 2 * m * k * n / sorted(walls)[2], 2 * m * k * n / sorted(cpus)[2]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
