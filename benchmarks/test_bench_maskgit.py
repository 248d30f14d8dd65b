"""MaskGIT sampler benchmarks: tokens/s of `maskgit_decode` (masked tokens filled per second).

Groups (each row beside its baseline, timed in the same run):
- maskgit-sampler-<cfg>: fused selection kernels (backend="auto") vs reference ops, fp32;
  the bf16 path (`autocast_dtype=torch.bfloat16`: the transformer's cached
  low-precision copy, bf16 blocks with fp32 stream/LayerNorms/head) and, for comparison,
  the same model under plain torch.autocast. extra_info: tokens/s, and the ratio to the
  reference (fp32 rows) or to fused fp32 (bf16 rows), on wall time and on process CPU time
  (with VQFAST_BENCH_THREADS=1 the CPU-time ratio is the one the machine's load disturbs least).
- maskgit-bf16-agreement-<cfg>: bf16 vs fp32 under argmax choice: the logits' argmax on
  identical inputs (half-masked token maps: `step_agreement`; the fp32 decode's own state
  before each step, at the positions that step revealed: `decode_step_agreement`), and
  whole decodes (`decode_agreement`: one flipped token changes the context of every later
  step, so differences cascade). `weight_rounding_*`: fp32 compute with the block weights
  rounded to bf16, the floor that any path with bf16 GEMM weights shares.
- maskgit-forward-<cfg>: transformer forward FLOP/s as a fraction of the machine's GEMM
  FLOP/s for the same dtype ([B*L, D] x [D, 4D], fp32 and bf16 both timed in the same test).
Configs: BidirectionalTransformer presets "tiny" (the demo's: 8x8 tokens, 256 codes, 4 x 128)
and "64px" (16x16 tokens, 1024 codes, 24 blocks x 768, 16 heads; VQFAST_BENCH_MASKGIT_DEPTH
lowers the depth when time is short). muse-maskgit-pytorch is compared in benchmarks/test_bench_maskgit_muse.py.

    VQFAST_BENCH_THREADS=1 python -m pytest benchmarks/test_bench_maskgit.py --benchmark-only -k 64px
"""
from __future__ import annotations

import copy
import os
import time

import pytest
import torch

from vqfast import checkpoint
from vqfast.demo import default_cache_dir
from vqfast.models.common.inference import inference_copy
from vqfast.models.common.transformer import Block
from vqfast.models.maskgit import BidirectionalTransformer, maskgit_decode
from vqfast.train.checkpointing import model_path
from timing import gemm_rate, machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

if os.environ.get("VQFAST_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["VQFAST_BENCH_THREADS"]))

STEPS = 8
_SIZE = ("codebook_size", "seq_len", "dim", "depth", "heads")
CONFIGS = {  # BidirectionalTransformer presets, batch and rounds
    "tiny": dict({k: BidirectionalTransformer.PRESETS["tiny"][k] for k in _SIZE}, batch=32, rounds=5),
    "64px": dict({k: BidirectionalTransformer.PRESETS["64px"][k] for k in _SIZE}, batch=2, rounds=2,
                 depth=int(os.environ.get("VQFAST_BENCH_MASKGIT_DEPTH", 24))),
}
_MEDIANS: dict[tuple[str, str], tuple[float, float]] = {}  # (cfg, row) -> (wall, cpu) median seconds
_NETS: dict[str, BidirectionalTransformer] = {}


def _net(cfg: str) -> BidirectionalTransformer:
    """The config's transformer; "tiny" uses the demo's trained checkpoint when it is cached."""
    if cfg not in _NETS:
        c = CONFIGS[cfg]
        cached = default_cache_dir() / "transformer"
        if cfg == "tiny" and (cached / "latest").exists():
            net = checkpoint.load(model_path(cached), expected=BidirectionalTransformer)
            net.weights = f"trained by `python -m vqfast demo` ({cached})"
        else:
            torch.manual_seed(0)
            net = BidirectionalTransformer.from_preset(cfg, depth=c["depth"])
            net.weights = "random init (seed 0)"
        _NETS[cfg] = net.eval()
    return _NETS[cfg]




class _Autocast:
    """The transformer under plain torch.autocast (no vqfast Blocks visible to the sampler):
    the bf16 path before the low-precision copy, kept as a comparison row."""

    def __init__(self, net):
        self.net, self.seq_len, self.mask_id = net, net.seq_len, net.mask_id

    def __call__(self, tokens, class_labels=None):
        return self.net(tokens, class_labels)


def _pedantic(benchmark, fn, rounds: int) -> tuple[float, float]:
    """benchmark.pedantic(fn) after one warm-up; (wall median, process CPU-time median) seconds."""
    cpu = []

    def timed():
        t0 = time.process_time()
        fn()
        cpu.append(time.process_time() - t0)

    fn()
    benchmark.pedantic(timed, rounds=rounds, iterations=1)
    return benchmark.stats.stats.median, sorted(cpu)[len(cpu) // 2]


VARIANTS = {  # name -> (backend, bf16?, plain autocast?, baseline variant for the ratio)
    "reference-fp32": ("reference", False, False, None),
    "fused-fp32": ("auto", False, False, "reference-fp32"),
    "fused-bf16": ("auto", True, False, "fused-fp32"),
    "fused-bf16-autocast": ("auto", True, True, "fused-fp32"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_sampler(benchmark, cfg, variant):
    c, (backend, bf16, plain, base) = CONFIGS[cfg], VARIANTS[variant]
    net = _net(cfg)
    model = _Autocast(net) if plain else net
    benchmark.group = f"maskgit-sampler-{cfg}"
    seeds = iter(range(10_000))  # a fresh seed per round: different noise, same work
    run = lambda: maskgit_decode(model, batch_size=c["batch"], steps=STEPS, generator=next(seeds),  # noqa: E731
                                 backend=backend, autocast_dtype=torch.bfloat16 if bf16 else None)
    wall, cpu = _pedantic(benchmark, run, c["rounds"])
    _MEDIANS[(cfg, variant)] = (wall, cpu)
    tokens = c["batch"] * c["seq_len"]
    benchmark.extra_info.update(machine(), tokens_per_s=tokens / wall, cpu_s=cpu, steps=STEPS, batch=c["batch"],
                                weights=net.weights, config={k: v for k, v in c.items() if k != "rounds"})
    if base and (cfg, base) in _MEDIANS:
        b_wall, b_cpu = _MEDIANS[(cfg, base)]
        benchmark.extra_info[f"speedup_vs_{base}"] = b_wall / wall
        benchmark.extra_info[f"cpu_time_speedup_vs_{base}"] = b_cpu / cpu
    ratios = {k: v for k, v in benchmark.extra_info.items() if "speedup" in k}
    print(f"\n[{cfg} {variant}] {tokens / wall:.1f} tokens/s, cpu {cpu:.3f} s "
          + " ".join(f"{k}={v:.3g}" for k, v in ratios.items()))


def _rounded_weights(net: BidirectionalTransformer) -> BidirectionalTransformer:
    """fp32 copy of net whose Block Linear weights are rounded to bf16 (the error floor of bf16 GEMMs)."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        for blk in (m for m in out.modules() if isinstance(m, Block)):
            for p in (p for m in blk.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()):
                p.copy_(p.bfloat16().float())
    return out


@pytest.mark.parametrize("cfg", list(CONFIGS))
@torch.no_grad()
def test_bf16_agreement(benchmark, cfg):
    """bf16 vs fp32 under argmax choice: per-step logit argmax on identical inputs, and whole decodes."""
    c = CONFIGS[cfg]
    net = _net(cfg)
    benchmark.group = f"maskgit-bf16-agreement-{cfg}"
    g = torch.Generator().manual_seed(0)
    # 8+ images: about 1000 masked positions at the 64px size, so one flip moves the share by 0.1%
    tokens = torch.randint(c["codebook_size"], (max(8, c["batch"]), c["seq_len"]), generator=g)
    masked = torch.rand(tokens.shape, generator=g) < 0.5
    tokens = tokens.masked_fill(masked, net.mask_id)
    ref = net(tokens).argmax(-1)[masked]

    def step_agreement(model):
        return (model(tokens).argmax(-1)[masked] == ref).float().mean().item()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_step = step_agreement(net)
    info = dict(step_agreement=step_agreement(inference_copy(net, torch.bfloat16, tokens.numel())),
                autocast_step_agreement=autocast_step,
                weight_rounding_step_agreement=step_agreement(_rounded_weights(net)))
    kw = dict(batch_size=c["batch"] * 2, steps=STEPS, choice="argmax", generator=0)
    fp32, hist = maskgit_decode(net, return_history=True, **kw)
    # Teacher-forced: bf16's argmax on the fp32 decode's own state before each step, at the
    # positions that step revealed (under argmax choice fp32 revealed its own argmax there).
    fast, agree, n = inference_copy(net, torch.bfloat16, fp32.numel()), 0, 0
    for t in range(STEPS):
        revealed = hist[t] & ~hist[t + 1]
        low = fast(fp32.masked_fill(hist[t], net.mask_id)).argmax(-1)
        agree, n = agree + int((low[revealed] == fp32[revealed]).sum()), n + int(revealed.sum())
    info["decode_step_agreement"] = agree / n
    bf16 = benchmark.pedantic(lambda: maskgit_decode(net, autocast_dtype=torch.bfloat16, **kw).tokens, rounds=1,
                              iterations=1)
    info["decode_agreement"] = (fp32 == bf16).float().mean().item()
    info["autocast_decode_agreement"] = (fp32 == maskgit_decode(_Autocast(net), autocast_dtype=torch.bfloat16,
                                                                **kw).tokens).float().mean().item()
    rounded = maskgit_decode(_rounded_weights(net), **kw).tokens
    info["weight_rounding_decode_agreement"] = (fp32 == rounded).float().mean().item()
    benchmark.extra_info.update(info, weights=net.weights, steps=STEPS)
    print(f"\n[{cfg} agreement] " + " ".join(f"{k}={v:.4f}" for k, v in info.items()))


# row -> (dtype, how): "copy" = the inference copy the samplers run (on CPU oneDNN-packed
# block weights), "plain" = the model as trained, "autocast" = the model under torch.autocast
_FORWARD_ROWS = {"fp32": (torch.float32, "copy"), "fp32-plain": (torch.float32, "plain"),
                 "bf16": (torch.bfloat16, "copy"), "bf16-autocast": (torch.bfloat16, "autocast")}


@pytest.mark.parametrize("row", list(_FORWARD_ROWS))
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_forward_flops_vs_gemm(benchmark, cfg, row):
    c = CONFIGS[cfg]
    dtype, how = _FORWARD_ROWS[row]
    net = _net(cfg)
    benchmark.group = f"maskgit-forward-{cfg}"
    tokens = torch.randint(c["codebook_size"] + 1, (c["batch"], c["seq_len"]))
    model = inference_copy(net, dtype, tokens.numel()) if how == "copy" else net

    def forward():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"):
            return model(tokens)

    wall, cpu = _pedantic(benchmark, forward, c["rounds"] + 1)
    flops = net.flops_per_forward(c["batch"])
    # the machine's GEMM rate for both dtypes, timed here (the load drifts): [B*L, D] x [D, 4D]
    m, d = c["batch"] * c["seq_len"], c["dim"]
    gemm = {name: gemm_rate(m, d, 4 * d, dt) for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    kind = "bf16" if dtype == torch.bfloat16 else "fp32"
    mine, packed = gemm[kind], gemm_rate(m, d, 4 * d, dtype, packed=True)
    benchmark.extra_info.update(machine(), forward_gflops=flops / wall / 1e9, fraction_of_gemm=flops / wall / mine[0],
                                fraction_of_packed_gemm=flops / wall / packed[0], packed_gemm_gflops=packed[0] / 1e9,
                                cpu_time_fraction_of_gemm=flops / cpu / mine[1],
                                gemm_gflops_fp32=gemm["fp32"][0] / 1e9, gemm_gflops_bf16=gemm["bf16"][0] / 1e9,
                                bf16_over_fp32_gemm=gemm["bf16"][1] / gemm["fp32"][1])
    print(f"\n[{cfg} forward {row}] " + " ".join(f"{k}={v:.3g}" for k, v in benchmark.extra_info.items()
                                                if isinstance(v, float) and k != "load_avg_1min"))
