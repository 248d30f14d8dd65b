"""VQ-DDM sampling: vqddm_sample's step beside a sampler built the official way, same run.

"official": the multinomial-diffusion log-space chain of VQ-DDM's code (`MultinomialChain`
of benchmarks/test_bench_diffusion.py, imported, not copied): the network emits [B, K, L],
then log_softmax, a [B, K, L] log one-hot of z_t, q_pred, one-step q_pred, logsumexp and
torch.rand Gumbel noise, all [B, K, L] float32 temporaries, every step.
"vqfast-mixture": `vqddm_sample`'s default step (`vqfast.models.vqddm.sampler.mixture_step`: one
chunked log-normalizer pass over the [B, L, K] logits, a categorical draw only for the rows
that pick the x0-model component, O(B * L) memory).
"vqfast-gumbel": `vqfast.ops.posterior_sample` (fused Gumbel-max over all K states;
`vqddm_sample(method="gumbel")`).

Groups:
- step-only (no network) at K = 1024 (paper) and K = 128 (tiny), B = 8, L = 256: median
  time and peak bytes allocated per step (torch profiler), as ratios official / vqfast.
- per step with the network, U-Net preset (117M, K = 1024) and tiny (K = 128): seconds per
  16x16 map for T = 4000 and strided 100 steps, and seconds per 50k maps, extrapolated from
  a few timed steps; beside the paper's "about 10 hours on a 2080Ti" (VQ-DDM Sec. 4.3, 1000 steps).
- a real strided 100-step `vqddm_sample` run of the tiny model (checks the extrapolation).

    python -m pytest benchmarks/test_bench_vqddm.py --benchmark-only
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from vqfast.diffusion import CosineSchedule
from vqfast.models.vqddm import VQDDM, vqddm_sample
from vqfast.models.vqddm.sampler import mixture_step
from vqfast.ops import posterior_sample
from timing import machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

_DIFF_BENCH = Path(__file__).with_name("test_bench_diffusion.py")
if not _DIFF_BENCH.exists():
    pytest.skip("needs benchmarks/test_bench_diffusion.py (its MultinomialChain is the official-way baseline)",
                allow_module_level=True)
_spec = importlib.util.spec_from_file_location("_bench_diffusion", _DIFF_BENCH)
_diff = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_diff)
MultinomialChain = _diff.MultinomialChain

T, L, SIDE = 4000, 256, 16
PAPER_HOURS_50K = 10.0  # VQ-DDM Sec. 4.3: ~10 h for 50k samples with 1000 steps on one 2080Ti
SCHED = CosineSchedule(T)
_TIMES: dict[tuple, float] = {}
_BYTES: dict[tuple, int] = {}


@pytest.fixture(autouse=True)
def threads():
    """VQDDM_BENCH_THREADS (default 1) intra-op threads for both samplers: on a shared, oversubscribed
    machine two spinning threads make small ops ~10x slower and the timings meaningless."""
    import os
    n = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("VQDDM_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(n)


def _allocated_bytes(fn) -> int:
    """Peak CPU bytes held by tensors fn allocates (torch profiler): each op's own allocations
    and frees applied in the order the ops end (an op's frees of its children's temporaries
    come after them), the running sum's maximum."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.end):
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return int(peak)


def _step_fn(impl: str, B: int, K: int):
    g = torch.Generator().manual_seed(K)
    sets = [(torch.randn(B, L, K, generator=g) * 2, torch.randint(K, (B, L), generator=g),
             torch.randint(2, T + 1, (B,), generator=g)) for _ in range(3)]
    if impl == "official":
        chain = MultinomialChain(SCHED, K)
        sets = [(x.permute(0, 2, 1).contiguous(), z, t) for x, z, t in sets]  # the official net emits [B, K, L]
        step = lambda x, z, t: chain.sample(x, z, t)  # noqa: E731
    elif impl == "vqfast-gumbel":
        step = lambda x, z, t: posterior_sample(x, z, t, SCHED, seed=1)  # noqa: E731
    else:
        step = lambda x, z, t: mixture_step(x, z, int(t[0]), SCHED, 1)  # noqa: E731 -- the sampler's t is shared
    state = {"i": 0}

    def fn():
        state["i"] = (state["i"] + 1) % len(sets)
        return step(*sets[state["i"]])
    return fn


IMPLS = ["official", "vqfast-gumbel", "vqfast-mixture"]


@pytest.mark.parametrize("K", [1024, 128])
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_vqddm_step(benchmark, impl, K):
    B = 8
    benchmark.group = f"vqddm step without network B={B} L={L} K={K}"
    fn = _step_fn(impl, B, K)
    benchmark.pedantic(fn, rounds=7, iterations=1, warmup_rounds=2)
    t = benchmark.stats.stats.median
    _TIMES[("step", K, impl)], _BYTES[("step", K, impl)] = t, _allocated_bytes(fn)
    info = {**machine(), "median_s": t, "peak_bytes": _BYTES[("step", K, impl)],
            "bytes_per_position": _BYTES[("step", K, impl)] / (B * L), "logit_bytes": B * L * K * 4}
    if impl != "official" and ("step", K, "official") in _TIMES:
        info["speedup_vs_official"] = _TIMES[("step", K, "official")] / t
        info["bytes_ratio_official_over_vqfast"] = _BYTES[("step", K, "official")] / max(1, _BYTES[("step", K, impl)])
    benchmark.extra_info.update(info)


MODELS = {"unet-117m": lambda: VQDDM.from_preset("paper", T=T), "tiny": lambda: VQDDM.from_preset("tiny", T=T)}
BATCH = {"unet-117m": 2, "tiny": 8}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_vqddm_sampling(benchmark, impl, model_name):
    torch.manual_seed(0)
    model = MODELS[model_name]().eval()
    B, K = BATCH[model_name], model.codebook_size
    chain = MultinomialChain(SCHED, K)
    z = torch.randint(K, (B, SIDE, SIDE))
    ts = iter(range(T, 1, -1))

    @torch.no_grad()
    def one_step():
        nonlocal z
        t = next(ts)
        logits = model(z, torch.full((B,), t))
        if impl == "official":
            z = chain.sample(logits.flatten(1, 2).permute(0, 2, 1).contiguous(), z.flatten(1),
                             torch.full((B,), t)).view(B, SIDE, SIDE)
        elif impl == "vqfast-gumbel":
            z = posterior_sample(logits, z, t, SCHED, seed=t)
        else:
            z = mixture_step(logits, z, t, SCHED, t)

    benchmark.group = f"vqddm sampling step with network ({model_name}, B={B}, K={K})"
    benchmark.pedantic(one_step, rounds=3 if model_name == "unet-117m" else 6, iterations=1, warmup_rounds=1)
    step = benchmark.stats.stats.median
    _TIMES[("sample", model_name, impl)] = step
    per_map = step / B
    info = {**machine(), "median_step_s": step, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "s_per_map_T4000": per_map * T, "s_per_map_strided100": per_map * 100,
            "hours_per_50k_T4000": per_map * T * 50000 / 3600, "hours_per_50k_strided100": per_map * 100 * 50000 / 3600,
            "hours_per_50k_1000steps": per_map * 1000 * 50000 / 3600,
            "paper_hours_per_50k_1000steps_2080Ti": PAPER_HOURS_50K}
    other = _TIMES.get(("sample", model_name, "official"))
    if impl != "official" and other:
        info["speedup_vs_official_with_network"] = other / step
        if ("step", K, "official") in _TIMES and ("step", K, impl) in _TIMES:
            info["non_network_ratio_official_over_vqfast"] = _TIMES[("step", K, "official")] / _TIMES[("step", K, impl)]
    benchmark.extra_info.update(info)


def test_bench_vqddm_tiny_strided_run(benchmark):
    """A real 100-step strided run of the tiny model (B = 8): seconds per map, to check the extrapolation."""
    torch.manual_seed(0)
    model = VQDDM.from_preset("tiny", T=T).eval()
    benchmark.group = "vqddm_sample tiny strided 100 steps (B=8)"
    benchmark.pedantic(lambda: vqddm_sample(model, batch_size=8, steps=100, generator=0), rounds=2, iterations=1)
    t = benchmark.stats.stats.median
    step = _TIMES.get(("sample", "tiny", "vqfast-mixture"), float("nan"))
    benchmark.extra_info.update({**machine(), "s_per_map": t / 8, "hours_per_50k": t / 8 * 50000 / 3600,
                                 "extrapolated_s_per_map": step / 8 * 100})
