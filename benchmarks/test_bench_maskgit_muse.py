"""vqfast's MaskGIT sampler beside muse-maskgit-pytorch's (lucidrains, 0.3.5) at equal size and steps.

Both decode an all-[MASK] map in STEPS steps with a sampled token choice (muse: top-10%
filter + Gumbel-max at an annealed temperature; vqfast: `maskgit_decode(choice="sample")`
with Gumbel-noised confidence), fp32, one process, rows timed in the same run. Equal size =
same width, depth, heads, sequence length and vocabulary. muse's blocks are not the same
network: each adds a cross-attention to the text context (queries and output projections
over every token) and a GEGLU feed-forward, so its forward costs about 14 dim^2 per token
and layer against vqfast's 12: extra_info gives the raw speed-up (the target, >= 1.3x) and
the one per FLOP.

Running muse here needs two stand-ins, neither on its sampling path:
- torchvision: the only wheel built for torch 2.13 (0.28.0) fails to load its C ops against
  the CPU wheel ("operator torchvision::nms does not exist"); muse imports it only for VGG
  and data loading, so a stub module stands in when the import fails.
- T5: `generate` encodes text prompts with T5 weights from the hub; the benchmark gives the
  transformer an all-zero text embedding instead (muse masks it out; its null key/value
  remains), and a local T5 config only to size the text projection.

    pip install muse-maskgit-pytorch==0.3.5 --no-deps beartype ema-pytorch memory-efficient-attention-pytorch transformers
    python -m pytest benchmarks/test_bench_maskgit_muse.py --benchmark-only
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import types

import pytest
import torch

from vqfast.models.maskgit import BidirectionalTransformer, maskgit_decode
from timing import interleaved, machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

STEPS = 8
_SIZE = ("codebook_size", "dim", "depth", "heads")
# BidirectionalTransformer presets (side: tokens per row of the square map), batch and rounds
CONFIGS = {
    "tiny": dict({k: BidirectionalTransformer.PRESETS["tiny"][k] for k in _SIZE}, side=8, batch=32, rounds=5),
    "64px": dict({k: BidirectionalTransformer.PRESETS["64px"][k] for k in _SIZE}, side=16, batch=2, rounds=3,
                 depth=int(os.environ.get("VQFAST_BENCH_MASKGIT_DEPTH", 24))),
}
_MEDIANS: dict[tuple[str, str], float] = {}


def _import_muse():
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or its C ops do not load against this torch: stub (see docstring)
        stub = types.ModuleType("torchvision")
        for sub in ("transforms", "datasets", "utils", "models"):
            mod = types.ModuleType(f"torchvision.{sub}")
            mod.__getattr__ = lambda name: None  # only touched by muse's training and VGG code
            setattr(stub, sub, mod)
            sys.modules[f"torchvision.{sub}"] = mod
        sys.modules["torchvision"] = stub
    os.environ.setdefault("TQDM_DISABLE", "1")
    return importlib.import_module("muse_maskgit_pytorch")


def _muse(cfg: str, t5_dir):
    pytest.importorskip("transformers")
    try:
        muse = _import_muse()
    except ImportError as e:
        pytest.skip(f"muse-maskgit-pytorch not installed: {e}")
    c = CONFIGS[cfg]
    (t5_dir / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": c["dim"]}))
    torch.manual_seed(0)
    tf = muse.MaskGitTransformer(num_tokens=c["codebook_size"], seq_len=c["side"] ** 2, dim=c["dim"], depth=c["depth"],
                                 dim_head=c["dim"] // c["heads"], heads=c["heads"], t5_name=str(t5_dir))
    tf.encode_text = lambda texts: torch.zeros(len(texts), 1, c["dim"])
    return muse.MaskGit(image_size=c["side"], transformer=tf, vae=_ids_only_vae(muse, c["codebook_size"])).eval()


def _ids_only_vae(muse, codebook_size: int):
    """Stands in for muse's VAE (its type is checked): generate() reads the codebook size and
    returns the ids it would decode."""

    class IdsOnly(muse.VQGanVAE):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.codebook_size = codebook_size

        def copy_for_eval(self):
            return self

        def get_encoded_fmap_size(self, image_size):
            return image_size  # image_size is given in tokens here

        def decode_from_ids(self, ids):
            return ids

    return IdsOnly()


def _ours(cfg: str) -> BidirectionalTransformer:
    torch.manual_seed(0)
    return BidirectionalTransformer.from_preset(cfg, depth=CONFIGS[cfg]["depth"]).eval()


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_maskgit_vs_muse(benchmark, cfg, tmp_path):
    """Both samplers timed round-robin (interleaved() alternates them) so load on a shared
    machine hits both alike; the benchmark row is vqfast's, extra_info has both."""
    c = CONFIGS[cfg]
    benchmark.group = f"maskgit-vs-muse-{cfg}"
    muse, ours = _muse(cfg, tmp_path), _ours(cfg)
    seeds = iter(range(10_000))
    rows = {
        "muse": lambda i: muse.generate(texts=[""] * c["batch"], fmap_size=c["side"], timesteps=STEPS,
                                        cond_scale=1.0, temperature=1.0),
        "vqfast": lambda i: maskgit_decode(ours, batch_size=c["batch"], steps=STEPS, choice="sample",
                                           generator=next(seeds)).tokens,
    }
    for run in rows.values():  # warm-up; both fill every position with a valid token
        out = run(0)
        assert out.numel() == c["batch"] * c["side"] ** 2
        assert int(out.min()) >= 0 and int(out.max()) < c["codebook_size"]
    times = interleaved(rows, rounds=c["rounds"])
    benchmark.pedantic(rows["vqfast"], args=(0,), rounds=1, iterations=1)
    tokens = c["batch"] * c["side"] ** 2
    speedup = times["muse"]["median"] / times["vqfast"]["median"]
    benchmark.extra_info.update(
        machine(), steps=STEPS, config={k: v for k, v in c.items() if k != "rounds"},
        tokens_per_s={k: tokens / v["median"] for k, v in times.items()},
        params_M={"muse": _params(muse.transformer) / 1e6, "vqfast": _params(ours) / 1e6},
        speedup_vs_muse=speedup, speedup_vs_muse_per_flop=speedup * 12 / 14)
