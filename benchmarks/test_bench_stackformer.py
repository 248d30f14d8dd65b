"""Stackformer sampling tokens/s: KV cache vs the official full recomputation, fp32 vs bf16.

Rows (random-init models, batch BATCH = 1, one intra-op thread unless STACKFORMER_BENCH_THREADS
says otherwise: on this shared 2-core machine two-thread oneDNN GEMMs stall for ~8 ms per
call whenever another process holds a core), all timed in one run, interleaved round-robin
(median of ROUNDS):
  uncached   `stackformer_sample(use_cache=False)`: both stacks recompute the whole prefix
             every step, as the official sampler does (it even runs the Code-Transformer
             twice per step, so this baseline is faster than the official code)
  cached     preallocated KV caches, one token per stack per step
  fp32       the fp32 inference copy (on CPU oneDNN-packed fp32 block weights, `inference_copy`)
  bf16       `autocast_dtype=torch.bfloat16`: block weights cast once to bf16 and packed for
             oneDNN (`inference_copy`); fp32 residual stream, LayerNorms, heads. Comparison
             rows at 307M: bf16-unpacked (the plain low_precision_copy, nn.Linear in bf16)
             and bf16-autocast (torch.autocast around the fp32 model: weights cast every call)
307M (supp. Table 2, ImageNet class-conditional, n = 256): a whole 256-token run takes
minutes uncached, so the rows time STEPS steps at sequence positions 1.. and 257 - STEPS..256
(after a (256 - STEPS)-pair prefix run through the caches untimed). Full-sequence estimate: a step
costs a + b * i at position i (GEMMs over i rows uncached; weight reads plus a growing
cache read cached), so 256 steps take 256 * (step@start + step@end) / 2 (trapezoid).
tiny (d 64, 2+1 layers, K 1024, 32x32 positions, n = 256): whole 256-token runs, timed, at
batch 1 (dispatch-bound: a cached step is ~40 small ops plus two sample_logits calls, so
recomputing 256 rows costs only ~3x one) and batch TINY_BATCH = 8.

    flock /tmp/vqfast_bench.lock python -m pytest benchmarks/test_bench_stackformer.py --benchmark-only
"""
from __future__ import annotations

import functools
import os
import time

import pytest
import torch
from timing import machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

from vqfast.models.common.inference import low_precision_copy
from vqfast.models.mqvae.stackformer import Stackformer
from vqfast.models.mqvae.sampler import StackformerDecoding, stackformer_sample

BATCH = int(os.environ.get("STACKFORMER_BENCH_BATCH", "1"))
ROUNDS = int(os.environ.get("STACKFORMER_BENCH_ROUNDS", "3"))
STEPS = int(os.environ.get("STACKFORMER_BENCH_STEPS", "2"))
THREADS = int(os.environ.get("STACKFORMER_BENCH_THREADS", "1"))
TINY_BATCH = int(os.environ.get("STACKFORMER_BENCH_TINY_BATCH", "8"))
N = 256  # tokens per sample (f8 MQ-VAE at 25% kept: 256 of 32x32)
BIG_ROWS = ["fp32-uncached", "fp32-cached", "bf16-uncached", "bf16-cached", "bf16-unpacked-cached",
            "bf16-autocast-cached"]
TINY_ROWS = ["fp32-uncached", "fp32-cached", "bf16-uncached", "bf16-cached"]
_RESULTS: dict[tuple[str, int], dict] = {}
_MODELS: dict[str, Stackformer] = {}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(n)


def _prefix(m: Stackformer, P: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    pos = torch.stack([torch.randperm(m.num_positions, generator=g)[:P] for _ in range(BATCH)]).sort(1).values
    return torch.randint(m.codebook_size, (BATCH, P), generator=g), pos


@functools.lru_cache(maxsize=1)
def _unpacked(m: Stackformer) -> Stackformer:
    """The plain bf16-weight copy (nn.Linear in bf16, no oneDNN packing), built once per model."""
    return low_precision_copy(m)


def _decoding(m: Stackformer, row: str, start: int, seed: int) -> StackformerDecoding:
    """A sampling run of N tokens whose first `start` pairs are given (prefilled, untimed)."""
    dtype = None if row.startswith("fp32") else torch.bfloat16
    codes, pos = _prefix(m, start, seed) if start else (None, None)
    d = StackformerDecoding(m, batch_size=BATCH, num_tokens=N, class_labels=torch.zeros(BATCH, dtype=torch.long),
                            generator=seed, use_cache="uncached" not in row, prefix_codes=codes, prefix_positions=pos,
                            autocast_dtype=None if "autocast" in row or "unpacked" in row else dtype)
    if "autocast" in row:
        d.net = m  # the model as trained, under torch.autocast (see _steps)
    if "unpacked" in row:
        d.net = _unpacked(m)
        d.caches = d.net.new_caches(BATCH, N, torch.bfloat16, "cpu")
    d.prefill()
    return d


def _steps(m: Stackformer, row: str, start: int, seed: int) -> float:
    """Seconds per step over STEPS steps from sequence position `start`."""
    d = _decoding(m, row, start, seed)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled="autocast" in row)
    with amp:
        t0 = time.perf_counter()
        for i in range(start, start + STEPS):
            d.step(i)
        return (time.perf_counter() - t0) / STEPS


def _median(xs):
    return sorted(xs)[len(xs) // 2]


def _model(preset: str) -> Stackformer:
    if preset not in _MODELS:
        torch.manual_seed(0)
        _MODELS[preset] = (Stackformer.from_preset("307M") if preset == "307M" else
                           Stackformer.from_preset("tiny", num_positions=1024, max_len=N, codebook_size=1024)).eval()
    return _MODELS[preset]


def _tiny_run(row: str, seed: int, batch: int) -> None:
    stackformer_sample(_model("tiny"), batch_size=batch, generator=seed, use_cache="uncached" not in row,
                       autocast_dtype=None if row.startswith("fp32") else torch.bfloat16)


def _measure_307m() -> dict:
    m = _model("307M")
    ends = {"start": 0, "end": N - STEPS}
    times = {(row, where): [] for row in BIG_ROWS for where in ends}
    for r in range(ROUNDS + 1):  # round 0 warms up (packing, oneDNN primitives)
        for row in BIG_ROWS:
            for where, start in ends.items():
                t = _steps(m, row, start, seed=r)
                if r:
                    times[(row, where)].append(t)
    out = {}
    for row in BIG_ROWS:
        s, e = _median(times[(row, "start")]), _median(times[(row, "end")])
        out[row] = {"step_s_at_start": s, "step_s_at_256": e, "full_256_s_estimate": N * (s + e) / 2}
    return out


def _measure_tiny(batch: int) -> dict:
    times = {row: [] for row in TINY_ROWS}
    for r in range(ROUNDS + 1):  # round 0 warms up
        for row in TINY_ROWS:
            t0 = time.perf_counter()
            _tiny_run(row, seed=r, batch=batch)
            if r:
                times[row].append(time.perf_counter() - t0)
    return {row: {"full_256_s": _median(t), "step_s_mean": _median(t) / N} for row, t in times.items()}


def _results(preset: str, batch: int) -> dict:
    if (preset, batch) not in _RESULTS:
        _RESULTS[(preset, batch)] = _measure_307m() if preset == "307M" else _measure_tiny(batch)
    return _RESULTS[(preset, batch)]


@pytest.mark.parametrize("preset, batch, row", [("307M", BATCH, r) for r in BIG_ROWS]
                         + [("tiny", b, r) for b in sorted({BATCH, TINY_BATCH}) for r in TINY_ROWS])
def test_stackformer_sampling_tokens_per_s(benchmark, preset, batch, row):
    benchmark.group = f"stackformer-sample-{preset}-batch{batch}"
    res = _results(preset, batch)
    full = "full_256_s_estimate" if preset == "307M" else "full_256_s"
    info = benchmark.extra_info
    info.update(machine())
    info.update({"batch": batch, "tokens": N, "rounds": ROUNDS, **res[row]})
    info["tokens_per_s_full_256"] = batch * N / res[row][full]
    dtype, mode = row.split("-", 1)
    base = f"{dtype}-uncached"
    info["speedup_vs_official_uncached_full_256"] = res[base][full] / res[row][full]
    if preset == "307M":
        info["tokens_per_s_at_256"] = BATCH / res[row]["step_s_at_256"]
        info["speedup_vs_official_uncached_at_256"] = res[base]["step_s_at_256"] / res[row]["step_s_at_256"]
    if dtype == "bf16":
        ref = "fp32-cached" if "cached" in mode and "uncached" not in mode else "fp32-uncached"
        info["speedup_vs_fp32"] = res[ref][full] / res[row][full]
        if preset == "307M":
            info["speedup_vs_fp32_at_256"] = res[ref]["step_s_at_256"] / res[row]["step_s_at_256"]
    # the pytest-benchmark table: one more call of the row (307M: STEPS steps from the start, with
    # set-up; tiny: a whole run); the ratios above come from the interleaved rounds only
    if preset == "307M":
        benchmark.pedantic(lambda: _steps(_model("307M"), row, 0, seed=99), rounds=1, iterations=1)
    else:
        benchmark.pedantic(lambda: _tiny_run(row, seed=99, batch=batch), rounds=1, iterations=1)
