"""Training throughput of the library trainer vs an official-style step, and DDP scaling.

Rows per tokenizer (images/s of one optimizer step on the same pre-made batches, all timed in
one run, interleaved round-robin so load from other processes hits every row alike):
  official   the step as the papers' code writes it: the same network, its quantizer replaced
             by cdist + argmin + one-hot EMA statistics (taming / PUT / rq-vae-transformer),
             straight-through estimator, fp32, Adam, no autocast
  fp32       vqfast.train.Trainer.train_step (fused search + EMA statistics, clipping, schedule)
  bf16       the same under bf16 autocast (fp32 master weights)
  fp32_gan   fp32 with the paper's discriminator on from step 0 (PatchGAN generator term with the
             adaptive weight, then the discriminator's own step): the cost of the adversarial terms
extra_info holds each row's median seconds per step, images/s and its ratio to `official`.

DDP scaling (slow, VQFAST_SLOW=1): images/s of `torchrun --nproc_per_node 2` over one process at
the same per-process batch, read from the runs' JSONL logs (steps after the first).

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
import torch.nn.functional as F
from PIL import Image
from torch import nn

from timing import machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)
from vqfast.train import TrainConfig
from vqfast.train.distributed import Context
from vqfast.train.log import read_log
from vqfast.train.trainer import Trainer

ROUNDS = int(os.environ.get("VQFAST_BENCH_ROUNDS", "5"))
BATCH = int(os.environ.get("TRAIN_BENCH_BATCH", "8"))
TOKENIZERS = [("maskgit", "tiny"), ("rq", "tiny")]
if os.environ.get("VQFAST_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["VQFAST_BENCH_THREADS"]))
_RESULTS: dict[tuple[str, str], dict] = {}


def _folder(root: Path, n: int = 32, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3)).astype(np.uint8)).save(root / f"{i}.png")
    return root


class OfficialVQ(nn.Module):
    """The quantizer of the official code bases: cdist, argmin, one-hot EMA statistics, fp32."""

    def __init__(self, codebook: torch.Tensor, depth: int = 1, decay: float = 0.99, beta: float = 0.25,
                 eps: float = 1e-5):
        super().__init__()
        self.depth = depth  # > 1: RQ-VAE's residual loop over one shared codebook
        self.register_buffer("embed", codebook.clone())
        self.register_buffer("cluster_size", torch.ones(len(codebook)))
        self.register_buffer("embed_sum", codebook.clone())
        self.decay, self.beta, self.eps = decay, beta, eps

    def forward(self, z: torch.Tensor):
        from vqfast.quantizers.vector import QuantizerLosses
        zl = z.movedim(1, -1)
        flat = zl.reshape(-1, zl.shape[-1])
        residual, zq, indices = flat, torch.zeros_like(flat), []
        for _ in range(self.depth):
            idx = torch.cdist(residual, self.embed).argmin(1)
            code = self.embed[idx]
            if self.training:
                self._ema(residual.detach(), idx)
            zq, residual = zq + code, residual - code
            indices.append(idx)
        zq = zq.view_as(zl)
        commit = F.mse_loss(zl, zq.detach())
        zq = zl + (zq - zl).detach()
        idx = torch.stack(indices, -1).view(*zl.shape[:-1], self.depth) if self.depth > 1 else indices[0].view(
            zl.shape[:-1])
        return zq.movedim(-1, 1), idx, QuantizerLosses(self.beta * commit, commit, None)

    @torch.no_grad()
    def _ema(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, len(self.embed)).float()
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ x, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + len(self.embed) * self.eps) * n
        self.embed.copy_(self.embed_sum / size[:, None])


def _trainer(family: str, preset: str, folder: Path, out: Path, precision: str, gan: bool = False) -> Trainer:
    # without gan, no discriminator: the official-style row has none either
    cfg = TrainConfig(family, "tokenizer", data=str(folder), preset=preset, out=str(out), steps=10 ** 6,
                      batch_size=BATCH, precision=precision, progress=False, holdout=0.0,
                      adversarial=gan, disc_start=0)
    return Trainer(cfg, Context(0, 1, 0, torch.device("cpu")))


@functools.lru_cache(maxsize=None)
def _rows(family: str, preset: str, tmp: str):
    folder = _folder(Path(tmp) / "images")
    batches = []
    fp32 = _trainer(family, preset, folder, Path(tmp) / "fp32", "fp32")
    it = iter(fp32.data[(i, i)] for i in range(3 * BATCH))
    for _ in range(3):
        items = [next(it) for _ in range(BATCH)]
        batches.append((torch.stack([x for x, _, _ in items]), torch.zeros(BATCH, dtype=torch.long), 0))
    bf16 = _trainer(family, preset, folder, Path(tmp) / "bf16", "bf16")
    gan = _trainer(family, preset, folder, Path(tmp) / "gan", "fp32", gan=True)
    official = _trainer(family, preset, folder, Path(tmp) / "official", "fp32").model
    official.quantizer = OfficialVQ(official.quantizer.codebook.detach(), getattr(official.quantizer, "depth", 1))
    opt = torch.optim.Adam(official.parameters(), lr=1e-4, betas=(0.5, 0.9))

    def official_step(r):
        out = official(batches[r][0])
        opt.zero_grad(set_to_none=True)
        out.loss.total.backward()
        opt.step()

    def trainer_step(t, autocast):
        return lambda r: t.train_step(iter([batches[r]]), autocast)

    return {"official": official_step,
            "fp32": trainer_step(fp32, torch.autocast("cpu", enabled=False)),
            "bf16": trainer_step(bf16, torch.autocast("cpu", dtype=torch.bfloat16)),
            "fp32_gan": trainer_step(gan, torch.autocast("cpu", enabled=False))}


def _time_all(family: str, preset: str, tmp: str) -> dict[str, float]:
    key = (family, preset)
    if key not in _RESULTS:
        rows = _rows(family, preset, tmp)
        times = {name: [] for name in rows}
        for fn in rows.values():
            fn(0)
        for r in range(ROUNDS):
            for name, fn in rows.items():
                t0 = time.perf_counter()
                fn(r % 3)
                times[name].append(time.perf_counter() - t0)
        _RESULTS[key] = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return _RESULTS[key]


@pytest.mark.parametrize("row", ["official", "fp32", "bf16", "fp32_gan"])
@pytest.mark.parametrize("family, preset", TOKENIZERS, ids=[f"{f}-{p}" for f, p in TOKENIZERS])
def test_tokenizer_step(benchmark, tmp_path_factory, family, preset, row):
    medians = _time_all(family, preset, str(tmp_path_factory.mktemp(f"{family}-{preset}")))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(machine())
    benchmark.extra_info.update(row=row, seconds_per_step=medians[row], images_per_s=BATCH / medians[row],
                                speedup_vs_official=medians["official"] / medians[row])
    print(f"{family}-{preset} {row}: {BATCH / medians[row]:.1f} img/s, "
          f"x{medians['official'] / medians[row]:.2f} vs official")


@pytest.mark.skipif(os.environ.get("VQFAST_SLOW") != "1", reason="slow: set VQFAST_SLOW=1 to run")
def test_ddp_scaling(benchmark, tmp_path):
    folder = _folder(tmp_path / "images", n=64)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    args = ["-m", "vqfast", "train", "maskgit", "--data", str(folder), "--steps", "12", "--batch-size", str(BATCH),
            "--no-progress", "--holdout", "0"]
    rates = {}
    for nproc in (1, 2):
        launcher = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", "127.0.0.1:0"]
        out = tmp_path / f"run{nproc}"
        subprocess.run([*launcher, *args, "--out", str(out)], cwd=root, env=env, check=True, timeout=600)
        rates[nproc] = float(np.median([r["img_per_s"] for r in read_log(out)[1:]]))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(machine())
    benchmark.extra_info.update(one_process_img_per_s=rates[1], two_process_img_per_s=rates[2],
                                scaling=rates[2] / rates[1])
    print(f"DDP scaling: {rates[1]:.1f} -> {rates[2]:.1f} img/s (x{rates[2] / rates[1]:.2f})")
