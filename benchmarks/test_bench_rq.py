"""Draft-and-Revise seconds per sample: the depth cache vs the naive way, fp32 vs bf16.

Rows (random-init models, class-conditional, supp. A.4 decoding: M = 3, T_revise = 2,
temperature 0.8 and guidance 1.4 in the revise phase; T_draft = 8 and 64):
  naive   `draft_and_revise(depth_cache=False)`: the whole model (spatial + depth
          transformer over every position) is recomputed for each of the D depth steps
  cached  vqfast: one spatial pass per UPDATE step, the depth transformer with a KV
          cache on the resampled positions only
each in fp32 and under torch.autocast(bfloat16). The paper's figure: 0.08 s/sample for
the 371M model on A100-class GPUs (supp. Table 2).

tiny: full sampler runs. 371M (and 821M / 1.4B if asked): a full run takes minutes per
row on this CPU, so one draft UPDATE step (at the group size of T_draft) and one guided
revise step are timed and composed: s/sample = (T_draft * t_draft + M * T_revise *
t_revise) / batch. Every step of a phase costs the same, so the composition is exact
up to noise; the tiny rows print the composed and the full-run figure side by side.
extra_info also holds the spatial forward's FLOP/s as a fraction of this machine's GEMM
rate, for the same [B*L, d] x [d, 4d] shape and for a large square GEMM, per dtype.

    python -m pytest benchmarks/test_bench_rq.py --benchmark-only -s
    RQ_BENCH_PRESETS=tiny VQFAST_BENCH_THREADS=1 python -m pytest benchmarks/test_bench_rq.py -s
"""
from __future__ import annotations

import contextlib
import os
import time

import pytest
import torch

from vqfast.models.rq import PAPER_SETTINGS, ContextualRQTransformer, draft_and_revise
from vqfast.models.rq.sampler import _Sampler
from timing import machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

PAPER_S_PER_SAMPLE = 0.08  # 371M, A100-class GPUs, supp. Table 2
PRESETS = [p for p in os.environ.get("RQ_BENCH_PRESETS", "tiny,371M").split(",") if p]
ROUNDS = int(os.environ.get("RQ_BENCH_ROUNDS", "3"))
BATCH = {"tiny": 8, "371M": 2, "821M": 2, "1.4B": 2}
DECODE = {k: v for k, v in PAPER_SETTINGS["371M"].items() if k != "T_draft"}
if os.environ.get("VQFAST_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["VQFAST_BENCH_THREADS"]))


def _autocast(dtype):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()


def _median(fn, rounds=ROUNDS) -> float:
    fn()  # warm-up (allocation, autocast weight casts, oneDNN primitive creation)
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def gemm_rate(m: int, k: int, n: int, dtype) -> float:
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    return 2 * m * k * n / _median(lambda: a @ b, 5)


def _net(preset: str) -> ContextualRQTransformer:
    torch.manual_seed(0)
    return ContextualRQTransformer.from_preset("tiny-cond" if preset == "tiny" else preset).eval()


def _step_fn(net, B, labels, T, guidance, cached, dtype):
    """One UPDATE step resampling N / T positions per map (guided if guidance != 1)."""
    N, D = net.seq_len, net.code_depth
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(net.codebook_size, (B, N, D), generator=g)
    rows = torch.zeros(B, N, dtype=torch.bool)
    rows[:, : max(1, N // T)] = True
    sampler = _Sampler(net, labels, g, None, None, cached)
    temp = 0.8 if guidance != 1.0 else 1.0

    def step():
        with torch.no_grad():
            sampler.stacks(codes, rows, rows, temp, guidance)
    return step


def _step_time(net, B, labels, T, guidance, cached, dtype) -> float:
    # one autocast region around the warm-up and the timed steps, as around a whole
    # draft_and_revise call: the bf16 weight copies are made once, not every step
    with _autocast(dtype):
        return _median(_step_fn(net, B, labels, T, guidance, cached, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("preset", PRESETS)
def test_seconds_per_sample(benchmark, preset, dtype):
    net = _net(preset)
    B = BATCH.get(preset, 2)
    labels = torch.arange(B) % net.num_classes
    info = {"preset": preset, "batch": B, "dtype": str(dtype), "paper_s_per_sample_A100": PAPER_S_PER_SAMPLE,
            **machine(), **DECODE}
    # spatial forward vs GEMM rate
    L, d = net.seq_len + 1, net.config["dim"]
    codes = torch.randint(net.codebook_size, (B, *net.grid, net.code_depth))
    hidden = torch.zeros(B, *net.grid, dtype=torch.bool)
    with torch.no_grad(), _autocast(dtype):  # one region: weights cast to bf16 once (warm-up)
        t_sp = _median(lambda: net.spatial_forward(codes, hidden, labels))
    rate = net.flops_spatial(B) / t_sp
    info.update(spatial_gflops=rate / 1e9,
                spatial_vs_same_shape_gemm=rate / gemm_rate(B * L, d, 4 * d, dtype),
                spatial_vs_4096_gemm=rate / gemm_rate(4096, 4096, 4096, dtype))
    for T_draft in (8, 64):
        for cached in (False, True):
            name = f"T{T_draft}_{'cached' if cached else 'naive'}"
            t_draft = _step_time(net, B, labels, T_draft, 1.0, cached, dtype)
            t_rev = _step_time(net, B, labels, DECODE["T_revise"], DECODE["revise_guidance"], cached, dtype)
            steps_rev = DECODE["M"] * DECODE["T_revise"]
            info[f"{name}_s_per_sample_composed"] = (T_draft * t_draft + steps_rev * t_rev) / B
            if preset.startswith("tiny"):
                def run(T=T_draft, c=cached):
                    with _autocast(dtype):
                        draft_and_revise(net, batch_size=B, class_labels=labels, T_draft=T, depth_cache=c,
                                         generator=0, **DECODE)
                info[f"{name}_s_per_sample"] = _median(run) / B
        key = "_s_per_sample" if preset.startswith("tiny") else "_s_per_sample_composed"
        info[f"T{T_draft}_cache_speedup"] = info[f"T{T_draft}_naive{key}"] / info[f"T{T_draft}_cached{key}"]
    if preset.startswith("tiny"):
        timed = "a full T_draft = 8 sample of the batch"

        def main():
            with _autocast(dtype):
                draft_and_revise(net, batch_size=B, class_labels=labels, T_draft=8, generator=0, **DECODE)
    else:
        timed = "one guided revise step of the batch, bf16 weight copies included"
        step = _step_fn(net, B, labels, DECODE["T_revise"], DECODE["revise_guidance"], True, dtype)

        def main():
            with _autocast(dtype):
                step()
    benchmark.extra_info.update(info)
    benchmark.group = f"draft_and_revise {preset} (timed: the cached path, {timed})"
    _RESULTS[(preset, str(dtype))] = info
    benchmark.pedantic(main, rounds=ROUNDS, iterations=1)
    print(f"\n{preset} {dtype}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in info.items()))
    fp32, bf16 = _RESULTS.get((preset, str(torch.float32))), _RESULTS.get((preset, str(torch.bfloat16)))
    if fp32 and bf16:
        for T_draft in (8, 64):
            k = f"T{T_draft}_cached{key}"
            print(f"{preset} T_draft={T_draft}: cached fp32 {fp32[k]:.3g} / bf16 {bf16[k]:.3g} s/sample "
                  f"(bf16 {fp32[k] / bf16[k]:.2f}x); cache speedup fp32 {fp32[f'T{T_draft}_cache_speedup']:.2f}x, "
                  f"bf16 {bf16[f'T{T_draft}_cache_speedup']:.2f}x; paper (A100): {PAPER_S_PER_SAMPLE} s/sample")


_RESULTS: dict[tuple[str, str], dict] = {}
