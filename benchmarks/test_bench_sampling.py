"""Token samplers against their reference, the anchors' PyTorch chains
and the machine's memory ceiling, all timed in one run, at 1 and 2 threads.

Cases B = 8, (L, V) from SAMPLING_BENCH_CASES (default 256x1024, 1024x4096, 1024x16384),
logits = 3 * randn in fp32. Rows per case, interleaved round-robin over 3 input sets
(median of SAMPLING_BENCH_ROUNDS, default 5; min/max in extra_info):
  read_once        torch.amax(logits, -1): reading the logits once (the target's unit)
  copy             dst.copy_(logits): copy bandwidth (reads and writes the logits)
  exp_ceiling      one vectorized e^x per logit and a sum, nothing else (csrc/cpu/ceilings.cpp):
                   the least an op that needs a softmax normalizer can take (top-p, the
                   confidences of gumbel_topk_select, PUT's max-probability score)
  sample_*         vqfast.ops.sample_logits: greedy, Gumbel-max over V, top-k 50, top-p 0.9
  anchor_sample    softmax + torch.multinomial; anchor_topk: topk + softmax + multinomial
  select_*         vqfast.ops.gumbel_topk_select, argmax / sample choice
  anchor_maskgit   MaskGIT lab Sec. 2.3: softmax, max, log(p + 1e-9) + tau * gumbel,
                   masked_fill, sort-based mask_by_random_topk cut-off (sample choice:
                   multinomial over the probabilities)
  put_*            vqfast.ops.select_and_sample_topk (K = 50, one position)
  anchor_put       PUT Algorithm 1: softmax of every position, max-probability, masked
                   argmax, topk + multinomial on the chosen row
  ref_*            vqfast.reference.sampling on 1 x 32 positions, scaled to the full case
Every case runs at SAMPLING_BENCH_THREADS (default "1,2") torch threads; all rows of a
(case, threads) pair are timed together. Ratios in extra_info: x_read_once (time /
read_once: the issue's target is <= 1.5), speedup_vs_reference, speedup_vs_<anchor>.
On a busy 2-core machine the 2-thread rows (torch's too) wait on descheduled threads.

    python -m pytest benchmarks/test_bench_sampling.py --benchmark-only -s
"""
from __future__ import annotations

import functools
import os
import time

import pytest
import torch

import vqfast
from vqfast.reference import sampling as ref
from timing import machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

pytestmark = pytest.mark.skipif(not vqfast.backends()["cpu"]["available"],
                                reason="times the C++ CPU kernels: build the extension (pip install -e .)")

B = 8
CASES = [tuple(int(v) for v in c.split("x"))
         for c in os.environ.get("SAMPLING_BENCH_CASES", "256x1024,1024x4096,1024x16384").split(",")]
ROUNDS = int(os.environ.get("SAMPLING_BENCH_ROUNDS", "5"))
THREADS = [int(t) for t in os.environ.get("SAMPLING_BENCH_THREADS", "1,2").split(",")]
REF_ROWS, REF_POS = 1, 32  # the reference is timed on 1 batch row x 32 positions and scaled
TAU, TOP_K, TOP_P = 4.5, 50, 0.9


def _anchor_maskgit(x, masked, n, sample, g):
    probs = torch.softmax(x, -1)
    if sample:
        flat = probs.reshape(-1, probs.shape[-1])
        pred = torch.multinomial(flat, 1, generator=g).reshape(x.shape[:2])
        p = probs.gather(-1, pred[..., None]).squeeze(-1)
    else:
        p, pred = probs.max(-1)
    gumbel = -torch.log(-torch.log(torch.rand(p.shape, generator=g).clamp_min(1e-20)))
    conf = (torch.log(p + 1e-9) + TAU * gumbel).masked_fill(~masked, float("-inf"))
    sorted_conf = torch.sort(conf, dim=-1, descending=True).values  # mask_by_random_topk
    cut = sorted_conf.gather(1, (n - 1).clamp_min(0)[:, None])
    return pred, conf >= cut


def _anchor_put(x, known, g):
    probs = torch.softmax(x, -1)
    score = probs.amax(-1).masked_fill(known, -1.0)
    pos = score.argmax(1)
    row = x[torch.arange(x.shape[0]), pos]
    top = torch.topk(row, TOP_K, -1)
    pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=g)
    return pos, top.indices.gather(1, pick)


def _anchor_topk(x, g):
    flat = x.reshape(-1, x.shape[-1])
    top = torch.topk(flat, TOP_K, -1)
    pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=g)
    return top.indices.gather(1, pick)


@functools.lru_cache(maxsize=None)
def _inputs(L: int, V: int):
    g = torch.Generator().manual_seed(L + V)
    xs = [3 * torch.randn(B, L, V, generator=g) for _ in range(3)]
    masked = torch.rand(B, L, generator=g) < 0.5
    return xs, masked, masked.sum(1) // 2, torch.empty(B, L, V)


def _rows(L: int, V: int) -> dict:
    xs, masked, n, buf = _inputs(L, V)
    g = torch.Generator().manual_seed(0)
    b, p = REF_ROWS, REF_POS
    return {
        "read_once": lambda i: torch.amax(xs[i], -1),
        "copy": lambda i: buf.copy_(xs[i]),
        "exp_ceiling": lambda i: torch.ops.vqfast_bench.exp_sum_ceiling(xs[i].view(-1, V)),
        "sample_greedy": lambda i: vqfast.ops.sample_logits(xs[i], 0.0),
        "sample_gumbel": lambda i: vqfast.ops.sample_logits(xs[i], 1.0, generator=g),
        "sample_topk": lambda i: vqfast.ops.sample_logits(xs[i], 1.0, top_k=TOP_K, generator=g),
        "sample_topp": lambda i: vqfast.ops.sample_logits(xs[i], 1.0, top_p=TOP_P, generator=g),
        "anchor_sample": lambda i: torch.multinomial(torch.softmax(xs[i].reshape(-1, V), -1), 1, generator=g),
        "anchor_topk": lambda i: _anchor_topk(xs[i], g),
        "ref_sample_greedy": lambda i: ref.sample_logits(xs[i][:b, :p], 0.0, None, None, None, None, 1),
        "ref_sample_gumbel": lambda i: ref.sample_logits(xs[i][:b, :p], 1.0, None, None, None, None, 1),
        "ref_sample_topk": lambda i: ref.sample_logits(xs[i][:b, :p], 1.0, TOP_K, None, None, None, 1),
        "ref_sample_topp": lambda i: ref.sample_logits(xs[i][:b, :p], 1.0, None, TOP_P, None, None, 1),
        "select_argmax": lambda i: vqfast.ops.gumbel_topk_select(xs[i], masked, n, TAU, "argmax", generator=g),
        "select_sample": lambda i: vqfast.ops.gumbel_topk_select(xs[i], masked, n, TAU, "sample", generator=g),
        "anchor_maskgit_argmax": lambda i: _anchor_maskgit(xs[i], masked, n, False, g),
        "anchor_maskgit_sample": lambda i: _anchor_maskgit(xs[i], masked, n, True, g),
        "ref_select_argmax": lambda i: ref.gumbel_topk_select(xs[i][:b, :p], masked[:b, :p],
                                                                  masked[:b, :p].sum(1) // 2, TAU, "argmax", None, 1),
        "ref_select_sample": lambda i: ref.gumbel_topk_select(xs[i][:b, :p], masked[:b, :p],
                                                                  masked[:b, :p].sum(1) // 2, TAU, "sample", None, 1),
        "put_select": lambda i: vqfast.ops.select_and_sample_topk(xs[i], ~masked, TOP_K, 1, 1.0, generator=g),
        "anchor_put": lambda i: _anchor_put(xs[i], ~masked, g),
        "ref_put_select": lambda i: ref.select_and_sample_topk(xs[i][:b, :p], ~masked[:b, :p], TOP_K, 1, 1.0, 1),
    }


@functools.lru_cache(maxsize=None)
def _measure(L: int, V: int, threads: int) -> dict:
    rows = _rows(L, V)
    times: dict[str, list[float]] = {name: [] for name in rows}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _run(rows, times)
    finally:
        torch.set_num_threads(before)
    out = {}
    for name, t in times.items():
        scale = B * L / (REF_ROWS * min(L, REF_POS)) if name.startswith("ref_") else 1
        out[name] = {"median": scale * sorted(t)[len(t) // 2], "min": scale * min(t), "max": scale * max(t)}
    return out


def _run(rows: dict, times: dict) -> None:
    with torch.no_grad():
        for fn in rows.values():
            fn(0)
        for r in range(ROUNDS):
            for name, fn in rows.items():
                t0 = time.perf_counter()
                fn(r % 3)
                times[name].append(time.perf_counter() - t0)


BASELINES = {"sample_greedy": ("ref_sample_greedy", "anchor_sample"),
             "sample_gumbel": ("ref_sample_gumbel", "anchor_sample"),
             "sample_topk": ("ref_sample_topk", "anchor_topk"), "sample_topp": ("ref_sample_topp", "anchor_sample"),
             "select_argmax": ("ref_select_argmax", "anchor_maskgit_argmax"),
             "select_sample": ("ref_select_sample", "anchor_maskgit_sample"), "put_select": ("ref_put_select", "anchor_put")}


def _info(L: int, V: int, threads: int, name: str) -> dict:
    t = _measure(L, V, threads)
    med = {k: v["median"] for k, v in t.items()}
    info = {"row": name, "B": B, "L": L, "V": V, "median_ms": 1e3 * med[name], "min_ms": 1e3 * t[name]["min"],
            "max_ms": 1e3 * t[name]["max"], "x_read_once": med[name] / med["read_once"],
            "copy_GBps": 2 * B * L * V * 4 / med["copy"] / 1e9,
            "exp_ceiling_x_read_once": med["exp_ceiling"] / med["read_once"], **machine(), "threads": threads}
    for base in BASELINES.get(name, ()):
        key = "speedup_vs_reference" if base.startswith("ref_") else f"speedup_vs_{base}"
        info[key] = med[base] / med[name]
    return info


NAMES = ["read_once", "copy", "exp_ceiling", "sample_greedy", "sample_gumbel", "sample_topk", "sample_topp", "anchor_sample",
         "anchor_topk", "ref_sample_greedy", "ref_sample_gumbel", "ref_sample_topk", "ref_sample_topp",
         "select_argmax", "select_sample", "anchor_maskgit_argmax", "anchor_maskgit_sample", "ref_select_argmax",
         "ref_select_sample", "put_select", "anchor_put", "ref_put_select"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("threads", THREADS, ids=[f"t{t}" for t in THREADS])
@pytest.mark.parametrize("L, V", CASES, ids=[f"L{L}-V{V}" for L, V in CASES])
def test_bench_sampling(benchmark, L, V, threads, name):
    benchmark.group = f"sampling B={B} L={L} V={V} threads={threads}"
    benchmark.extra_info.update(_info(L, V, threads, name))
    fn = _rows(L, V)[name]
    torch.set_num_threads(threads)
    with torch.no_grad():
        benchmark.pedantic(fn, args=(0,), rounds=1, warmup_rounds=0)
    print(f"\n{name:<22} L={L:<5} V={V:<6} t={threads} {benchmark.extra_info['median_ms']:9.2f} ms  "
          f"x_read_once={benchmark.extra_info['x_read_once']:.2f}  "
          f"(exp ceiling {benchmark.extra_info['exp_ceiling_x_read_once']:.2f})  " + "  ".join(
              f"{k}={v:.2f}" for k, v in benchmark.extra_info.items() if k.startswith("speedup")))
