"""MaskGIT sampler benchmarks: tokens/s of `maskgit_decode` (masked tokens filled per second).

Groups (each row beside its baseline, timed in the same run):
- maskgit-sampler-<cfg>: fused selection kernels (backend="auto") vs reference ops, fp32,
  and the bf16 autocast path; extra_info holds tokens/s and the ratio to the reference
  (fp32 rows) or to fused fp32 (bf16 row).
- maskgit-bf16-agreement-<cfg>: bf16 vs fp32 decoded tokens under argmax choice (share of
  equal positions; target >= 0.99).
- maskgit-forward-<cfg>: transformer forward FLOP/s as a fraction of the machine's GEMM
  FLOP/s for the same dtype and the block's largest GEMM shape.
Configs: "tiny" (the demo's: 8x8 tokens, 256 codes, 4 x 128) and "seed" (16x16 tokens,
1024 codes, 24 blocks x 768, 16 heads; VQFAST_BENCH_MASKGIT_DEPTH lowers the depth when
time is short). No muse-maskgit-pytorch row: its 0.3.5 wheel requires torchvision (which
pins its own torch) and transformers, and `MaskGit.generate` always encodes text prompts
with T5 (weights fetched from the hub), so it cannot run here at equal size.

    python -m pytest benchmarks/test_bench_maskgit.py --benchmark-only
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from vqfast import checkpoint
from vqfast.demo import default_cache_dir
from vqfast.models.transformer import BidirectionalTransformer
from vqfast.samplers import maskgit_decode
from timing import machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

STEPS = 8
CONFIGS = {
    "tiny": dict(codebook_size=256, seq_len=64, dim=128, depth=4, heads=4, batch=32, rounds=5),
    "seed": dict(codebook_size=1024, seq_len=256, dim=768, depth=int(os.environ.get("VQFAST_BENCH_MASKGIT_DEPTH", 24)),
                 heads=16, batch=2, rounds=3),
}
_MEDIANS: dict[tuple[str, str], float] = {}
_NETS: dict[str, BidirectionalTransformer] = {}


def _net(cfg: str) -> BidirectionalTransformer:
    """The config's transformer; "tiny" uses the demo's trained checkpoint when it is cached."""
    if cfg not in _NETS:
        c = CONFIGS[cfg]
        cached = default_cache_dir() / "transformer"
        if cfg == "tiny" and (cached.with_suffix(".json")).exists():
            net = checkpoint.load(cached, expected=BidirectionalTransformer)
            net.weights = f"trained by `python -m vqfast demo` ({cached})"
        else:
            torch.manual_seed(0)
            net = BidirectionalTransformer(c["codebook_size"], c["seq_len"], dim=c["dim"], depth=c["depth"],
                                           heads=c["heads"])
            net.weights = "random init (seed 0)"
        _NETS[cfg] = net.eval()
    return _NETS[cfg]



VARIANTS = {  # name -> (backend, autocast dtype, baseline variant for the ratio)
    "reference-fp32": ("reference", None, None),
    "fused-fp32": ("auto", None, "reference-fp32"),
    "fused-bf16": ("auto", torch.bfloat16, "fused-fp32"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_sampler(benchmark, cfg, variant):
    c, (backend, dtype, base) = CONFIGS[cfg], VARIANTS[variant]
    net = _net(cfg)
    benchmark.group = f"maskgit-sampler-{cfg}"
    seeds = iter(range(10_000))  # a fresh seed per round: different noise, same work
    run = lambda: maskgit_decode(net, batch_size=c["batch"], steps=STEPS, generator=next(seeds),  # noqa: E731
                                 backend=backend, autocast_dtype=dtype)
    run()  # warm-up
    benchmark.pedantic(run, rounds=c["rounds"], iterations=1)
    med = benchmark.stats.stats.median
    _MEDIANS[(cfg, variant)] = med
    tokens = c["batch"] * c["seq_len"]
    benchmark.extra_info.update(machine(), tokens_per_s=tokens / med, steps=STEPS, batch=c["batch"], weights=net.weights,
                                config={k: v for k, v in c.items() if k != "rounds"})
    if base and (cfg, base) in _MEDIANS:
        benchmark.extra_info[f"speedup_vs_{base}"] = _MEDIANS[(cfg, base)] / med


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_bf16_agreement(benchmark, cfg):
    """Share of positions where bf16 autocast decoding (argmax choice) equals fp32's."""
    c = CONFIGS[cfg]
    net = _net(cfg)
    benchmark.group = f"maskgit-bf16-agreement-{cfg}"
    kw = dict(batch_size=c["batch"], steps=STEPS, choice="argmax", generator=0)
    fp32 = maskgit_decode(net, **kw)
    bf16 = benchmark.pedantic(lambda: maskgit_decode(net, autocast_dtype=torch.bfloat16, **kw), rounds=1, iterations=1)
    benchmark.extra_info.update(agreement=(fp32 == bf16).float().mean().item(), weights=net.weights)


def _gemm_flops(m: int, k: int, n: int, dtype: torch.dtype, reps: int = 5) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_forward_flops_vs_gemm(benchmark, cfg, dtype):
    c = CONFIGS[cfg]
    net = _net(cfg)
    benchmark.group = f"maskgit-forward-{cfg}"
    tokens = torch.randint(c["codebook_size"] + 1, (c["batch"], c["seq_len"]))

    def forward():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return net(tokens)

    forward()
    benchmark.pedantic(forward, rounds=c["rounds"], iterations=1)
    rate = net.flops_per_forward(c["batch"]) / benchmark.stats.stats.median
    gemm = _gemm_flops(c["batch"] * c["seq_len"], c["dim"], 4 * c["dim"], dtype)
    benchmark.extra_info.update(machine(), forward_gflops=rate / 1e9, gemm_gflops=gemm / 1e9,
                                fraction_of_gemm=rate / gemm)
