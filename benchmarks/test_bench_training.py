"""Training throughput of the library trainer vs an official-style step, and DDP scaling.

Rows per family and stage (images/s of one optimizer step for tokenizers, tokens/s for token
models, on the same pre-made batches, all timed in one run, interleaved round-robin so load
from other processes hits every row alike):
  official   the step as the papers' code writes it: the same network, its quantizer ops
             replaced by the expanded N x K distance + argmin and one-hot EMA statistics, every
             other vqfast op (diffusion posterior, samplers) by its PyTorch reference
             (`official_style.official_ops`), fp32, the stage's AdamW, no clipping, no autocast
  fp32       vqfast.train.Trainer.train_step (fused ops, clipping, schedule)
  bf16       the same under bf16 autocast (fp32 master weights)
  fp32_gan   (tokenizers) fp32 with the paper's discriminator on from step 0 (PatchGAN generator
             term with the adaptive weight, then the discriminator's own step); the other rows,
             like the official-style step, run without it
  fp32_cache, bf16_cache  (token models that train from a token cache) the step reading tokens
             from `--token-cache` shards written once by the same tokenizer: no image decoding or
             frozen tokenizer forward per step (the official-style step, and fp32 / bf16, encode
             the images every step)
extra_info holds each row's median seconds per step, items/s and its ratio to `official`.
Every family runs at its tiny preset, both stages; the paper presets (PAPER, batch 1) run with
VQFAST_SLOW=1.

DDP scaling (slow, VQFAST_SLOW=1): images/s of `torchrun --nproc_per_node 2` over one process at
the same per-process batch, read from the runs' JSONL logs (median over steps 2-40; the median of
three alternating runs of each).

    python -m pytest benchmarks/test_bench_training.py --benchmark-only -s
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from official_style import official_ops  # noqa: E402  (benchmarks/ is on sys.path under pytest)
from timing import machine  # noqa: E402
from vqfast import checkpoint
from vqfast.train import TrainConfig, get_stage
from vqfast.train.cache import write_cache
from vqfast.train.data import BatchPlan
from vqfast.train.distributed import Context
from vqfast.train.log import read_log
from vqfast.train.trainer import Trainer, _count

ROUNDS = int(os.environ.get("VQFAST_BENCH_ROUNDS", "5"))
DDP_ROUNDS = 3
BATCH = int(os.environ.get("TRAIN_BENCH_BATCH", "8"))
FAMILIES = ("maskgit", "put", "mqvae", "rq", "vqddm")
# (family, stage, preset, tokenizer preset of stage 2, batch)
TINY = [(f, s, "tiny", "tiny" if s == "model" else None, BATCH) for f in FAMILIES for s in ("tokenizer", "model")]
PAPER = [("maskgit", "tokenizer", "taming-f16-1024", None, 1), ("put", "tokenizer", "paper", None, 1),
         ("put", "model", "ffhq", "paper", 1), ("mqvae", "tokenizer", "f8", None, 1),
         ("rq", "tokenizer", "paper", None, 1), ("vqddm", "model", "paper", "taming-f16-1024", 1)]
SLOW = os.environ.get("VQFAST_SLOW") == "1"
CASES = TINY + [pytest.param(*c, marks=pytest.mark.skipif(not SLOW, reason="slow: set VQFAST_SLOW=1 to run"))
                for c in PAPER]
if os.environ.get("VQFAST_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["VQFAST_BENCH_THREADS"]))
_RESULTS: dict[tuple, dict] = {}


def _folder(root: Path, n: int = 32, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3)).astype(np.uint8)).save(root / f"{i}.png")
    return root


def _trainer(case: tuple, tmp: Path, precision: str, name: str, gan: bool = False,
             token_cache: Path | None = None) -> Trainer:
    family, stage, preset, tok_preset, batch = case
    tokenizer = None
    if tok_preset is not None:
        tokenizer = tmp / "tokenizer"
        if not (tokenizer / "model.json").exists():
            torch.manual_seed(0)
            checkpoint.save(get_stage(family, stage).tokenizer_cls.from_preset(tok_preset), tokenizer / "model")
    cfg = TrainConfig(family, stage, data=str(_folder(tmp / "images", n=4 * batch)), preset=preset,
                      out=str(tmp / name), steps=10 ** 6, batch_size=batch, precision=precision,
                      progress=False, holdout=0.0, tokenizer=None if tokenizer is None else str(tokenizer),
                      adversarial=gan, disc_start=0 if gan else None,
                      token_cache=None if token_cache is None else str(token_cache))
    return Trainer(cfg, Context(0, 1, 0, torch.device("cpu")))


@functools.lru_cache(maxsize=None)
def _rows(case: tuple, tmp: str):
    tmp, batch = Path(tmp), case[-1]
    fp32 = _trainer(case, tmp, "fp32", "fp32")
    items = [fp32.data[(i, i)] for i in range(3 * batch)]
    batches = [(torch.stack([x for x, _, _ in items[r * batch:(r + 1) * batch]]),
                torch.zeros(batch, dtype=torch.long), 0) for r in range(3)]
    bf16 = _trainer(case, tmp, "bf16", "bf16")
    official = _trainer(case, tmp, "fp32", "official")
    optimizer = torch.optim.AdamW(official.stage.trainable(official.model), lr=official.optimizer.defaults["lr"],
                                  betas=official.optimizer.defaults["betas"],
                                  weight_decay=official.optimizer.defaults["weight_decay"])
    count = _count(fp32._inputs(batches[0], 0))

    def official_step(r):
        with official_ops():
            inputs = official._inputs(batches[r], r)
            loss = official.stage.loss(official.model, inputs, torch.Generator().manual_seed(r),
                                       tokenizer=official.tokenizer)
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            optimizer.step()

    def trainer_step(t, autocast, data=batches):
        return lambda r: t.train_step(iter([data[r]]), autocast)

    rows = {"official": official_step, "fp32": trainer_step(fp32, torch.autocast("cpu", enabled=False)),
            "bf16": trainer_step(bf16, torch.autocast("cpu", dtype=torch.bfloat16))}
    if case[1] == "tokenizer":
        rows["fp32_gan"] = trainer_step(_trainer(case, tmp, "fp32", "gan", gan=True), torch.autocast("cpu", enabled=False))
    if _cacheable(case):
        cache = write_cache(case[0], tokenizer=str(tmp / "tokenizer"), data=str(tmp / "images"), out=tmp / "cache",
                            holdout=0.0)
        for precision, autocast in (("fp32", torch.autocast("cpu", enabled=False)),
                                    ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))):
            t = _trainer(case, tmp, precision, f"{precision}_cache", token_cache=cache)
            plan = BatchPlan(len(t.data), batch, seed=0)
            cached = [next(t.data.batches(plan, 0, r, r + 1)) for r in range(3)]
            rows[f"{precision}_cache"] = trainer_step(t, autocast, cached)
    return count, rows


def _cacheable(case: tuple) -> bool:
    return case[1] == "model" and get_stage(case[0], case[1]).cacheable


def _time_all(case: tuple, tmp: str) -> tuple[int, dict[str, float]]:
    if case not in _RESULTS:
        count, rows = _rows(case, tmp)
        rounds = ROUNDS if case[2] == "tiny" else 3
        times = {name: [] for name in rows}
        for fn in rows.values():
            fn(0)
        for r in range(rounds):
            for name, fn in rows.items():
                t0 = time.perf_counter()
                fn(r % 3)
                times[name].append(time.perf_counter() - t0)
        _RESULTS[case] = count, {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return _RESULTS[case]


@pytest.mark.parametrize("row", ["official", "fp32", "bf16", "fp32_gan", "fp32_cache", "bf16_cache"])
@pytest.mark.parametrize("family, stage, preset, tokenizer, batch", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in TINY + PAPER])
def test_training_step(benchmark, tmp_path_factory, family, stage, preset, tokenizer, batch, row):
    case = (family, stage, preset, tokenizer, batch)
    if row == "fp32_gan" and stage != "tokenizer":
        pytest.skip("token models train without a discriminator")
    if row.endswith("_cache") and not _cacheable(case):
        pytest.skip("this stage does not train from a token cache")
    count, medians = _time_all(case, str(tmp_path_factory.mktemp(f"{family}-{stage}-{preset}")))
    benchmark.group = "training"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    unit = get_stage(family, stage).unit
    benchmark.extra_info.update(machine())
    benchmark.extra_info.update(row=row, batch=batch, unit=unit, seconds_per_step=medians[row],
                                items_per_s=count / medians[row],
                                speedup_vs_official=medians["official"] / medians[row])
    print(f"{family}-{stage}-{preset} {row}: {count / medians[row]:.1f} {unit}/s, "
          f"x{medians['official'] / medians[row]:.2f} vs official")


@pytest.mark.skipif(os.environ.get("VQFAST_SLOW") != "1", reason="slow: set VQFAST_SLOW=1 to run")
def test_ddp_scaling(benchmark, tmp_path):
    folder = _folder(tmp_path / "images", n=64)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    args = ["-m", "vqfast", "train", "maskgit", "--data", str(folder), "--steps", "40", "--batch-size", str(BATCH),
            "--no-progress", "--holdout", "0"]
    runs = {1: [], 2: []}
    for r in range(DDP_ROUNDS):  # alternating, so a slower spell of the machine hits both
        for nproc in (1, 2):
            launcher = [sys.executable] if nproc == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", "127.0.0.1:0"]
            out = tmp_path / f"run{nproc}-{r}"
            subprocess.run([*launcher, *args, "--out", str(out)], cwd=root, env=env, check=True, timeout=600)
            runs[nproc].append(float(np.median([rec["img_per_s"] for rec in read_log(out)[1:]])))
    rates = {n: float(np.median(v)) for n, v in runs.items()}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(machine())
    benchmark.extra_info.update(one_process_img_per_s=rates[1], two_process_img_per_s=rates[2],
                                scaling=rates[2] / rates[1])
    print(f"DDP scaling: {rates[1]:.1f} -> {rates[2]:.1f} img/s (x{rates[2] / rates[1]:.2f})")
