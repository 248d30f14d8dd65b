"""`python -m vqfast demo`: MaskGIT inpainting end to end on a CPU in minutes.

1. Train the tiny VQGAN tokenizer (32x32 photo crops -> 8x8 tokens, 256 codes) on the
   bundled photos with the library trainer (`vqfast.train`), or load it from the cache
   directory (a run folder per stage; retrained when the recipe changed).
2. Encode the training crops once (a token cache) and train a small
   BidirectionalTransformer with MVTM (cosine gamma) on them, or load it from the cache.
3. Inpaint held-out crops (the right-hand strip of every photo, never trained on) with
   box / outside / strokes / half masks, several samples each, and write a PNG grid:
   masked input | completions | VQ reconstruction | ground truth.
4. Time `maskgit_decode` with the fused kernels (backend="auto") and with the
   reference ops (backend="reference"), same model and seed, and print tokens/s.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from vqfast.data import (
    MASK_KINDS,
    CropSampler,
    make_masks,
    pixel_to_token_mask,
    token_to_pixel_mask,
)
from vqfast.models.common.vqgan import VQGAN
from vqfast.models.maskgit import BidirectionalTransformer, maskgit_decode
from vqfast.train import TrainConfig, load_model, train_or_load
from vqfast.train.cache import TokenCache, write_cache
from vqfast.train.log import read_log
from vqfast.train.runs import run_status
from vqfast.visualize import save_grid

DEMO_VERSION = 2  # bump when the recipe changes so stale caches are retrained
# the "tiny" presets; a few hundred steps at learning rates well above the papers' (their runs
# take 100k+ steps): the whole demo needs a few minutes on a 2-core CPU
PRESET = "tiny"
BATCH = 32
TOKENIZER_LR, TOKENIZER_WARMUP = 2e-3, 20
TRANSFORMER_LR, TRANSFORMER_WARMUP = 1e-3, 50


def default_cache_dir() -> Path:
    return Path(os.environ.get("VQFAST_CACHE", Path.home() / ".cache" / "vqfast")) / f"demo-v{DEMO_VERSION}"


def tokenizer_config(cache: Path, steps: int, seed: int, *, budget_s: float | None = None,
                     progress: bool = True) -> TrainConfig:
    """The tokenizer's run: VQGAN "tiny" on the bundled photos (channels-last convolutions: ~2x
    faster on a CPU), in cache/tokenizer."""
    return TrainConfig("maskgit", "tokenizer", data="photos", preset=PRESET, out=str(cache / "tokenizer"),
                       steps=steps, batch_size=BATCH, lr=TOKENIZER_LR, warmup=TOKENIZER_WARMUP, seed=seed,
                       time_limit=budget_s, channels_last=True, progress=progress)


def transformer_config(cache: Path, steps: int, seed: int, *, budget_s: float | None = None,
                       progress: bool = True) -> TrainConfig:
    """The transformer's run: MaskGIT "tiny" (MVTM, cosine gamma) on the tokens of the cached
    tokenizer (encoded once into cache/tokens), in cache/transformer."""
    return TrainConfig("maskgit", "model", data="photos", preset=PRESET, out=str(cache / "transformer"),
                       tokenizer=str(cache / "tokenizer"), token_cache=str(cache / "tokens"), steps=steps,
                       batch_size=BATCH, lr=TRANSFORMER_LR, warmup=TRANSFORMER_WARMUP, seed=seed,
                       time_limit=budget_s, progress=progress)


def _final(run: Path, term: str, last: int = 20) -> tuple[int, float]:
    """(steps run, mean of `term` over the last `last` logged steps) of a run folder."""
    records = [r for r in read_log(run) if term in r]
    tail = records[-last:]
    return records[-1]["step"], sum(r[term] for r in tail) / len(tail)


@torch.no_grad()
def inpaint_grid(vq: VQGAN, net: BidirectionalTransformer, x: torch.Tensor, *, n_samples: int = 3, steps: int = 8,
                 seed: int = 0) -> tuple[list, list[str]]:
    """Held-out images x [N, 3, R, R] (N a multiple of the 4 mask kinds), N/4 per mask kind:
    masked input, n_samples completions (choice="sample"; known pixels pasted back), VQ
    reconstruction, truth."""
    if x.dim() != 4 or x.shape[0] % len(MASK_KINDS):
        raise ValueError(f"x must be [N, 3, R, R] with N a multiple of {len(MASK_KINDS)}, got {tuple(x.shape)}")
    n_images = x.shape[0] // len(MASK_KINDS)
    R = vq.config["resolution"]
    pix = torch.cat([make_masks(k, n_images, R, R, seed + i) for i, k in enumerate(MASK_KINDS)])
    tok_mask = pixel_to_token_mask(pix, vq.token_hw)
    pix = token_to_pixel_mask(tok_mask, (R, R))  # the region actually regenerated: whole tokens
    tokens = vq.encode(x)
    rec = vq.decode_tokens(tokens)
    reps = lambda t: t.repeat_interleave(n_samples, 0)  # noqa: E731 -- every image n_samples times
    out = maskgit_decode(net, reps(tokens), reps(tok_mask), steps=steps, choice="sample", generator=seed).tokens
    imgs = vq.decode_tokens(out).view(len(x), n_samples, 3, R, R)
    keep = (~pix)[:, None, None]
    imgs = torch.where(keep, x[:, None], imgs)
    masked_in = torch.where(pix[:, None], torch.full_like(x, 0.6), x)  # light grey = missing
    rows = [[masked_in[i], *imgs[i], rec[i], x[i]] for i in range(len(x))]
    labels = ["masked input", *[f"sample {j + 1}" for j in range(n_samples)], "VQ recon", "ground truth"]
    return rows, labels


@torch.no_grad()
def sampler_throughput(net: BidirectionalTransformer, *, batch: int = 32, steps: int = 8, repeats: int = 3,
                       seed: int = 0) -> dict[str, float]:
    """Masked tokens filled per second by maskgit_decode (generation from an all-[MASK]
    map), fused kernels (backend="auto") vs reference ops, interleaved, median of repeats."""
    times = {"auto": [], "reference": []}
    for backend in times:  # warm-up: extension load, first allocations
        maskgit_decode(net, batch_size=batch, steps=steps, generator=seed, backend=backend)
    for r in range(repeats):
        for backend in times:
            t0 = time.perf_counter()
            maskgit_decode(net, batch_size=batch, steps=steps, generator=seed + r, backend=backend)
            times[backend].append(time.perf_counter() - t0)
    n = batch * net.seq_len
    med = {b: sorted(t)[len(t) // 2] for b, t in times.items()}
    return {"fused_tok_s": n / med["auto"], "reference_tok_s": n / med["reference"],
            "speedup": med["reference"] / med["auto"]}


def run(*, cache_dir: str | Path | None = None, out: str | Path = "maskgit_demo.png", retrain: bool = False,
        tokenizer_steps: int = 600, transformer_steps: int = 1500, budget_minutes: float = 8.0, seed: int = 0,
        progress: bool = True) -> dict:
    """The whole demo; returns what it printed as a dict (paths, losses, throughput, seconds)."""
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    budget = budget_minutes * 60
    report: dict = {}

    cfg = tokenizer_config(cache, tokenizer_steps, seed, budget_s=0.5 * budget, progress=progress)
    if retrain or run_status(cfg) != "finished":
        print(f"training the tokenizer: {tokenizer_steps} steps of {BATCH} crops (32x32 -> 8x8 tokens, 256 codes)")
    run_tok, report["tokenizer_trained"] = train_or_load(cfg, retrain=retrain)
    if report["tokenizer_trained"]:
        report["tokenizer_steps"], l1 = _final(run_tok, "rec")
        print(f"  {report['tokenizer_steps']} steps, final L1 {l1:.3f}")
    else:
        print(f"tokenizer loaded from {run_tok}")
    vq = load_model(run_tok)
    report["tokenizer_s"] = time.perf_counter() - t_start

    t1 = time.perf_counter()
    left = budget - (t1 - t_start) - 60  # keep a minute for sampling and timing
    cfg = transformer_config(cache, transformer_steps, seed, budget_s=max(left, 30), progress=progress)
    retrain_net = retrain or report["tokenizer_trained"]
    if retrain_net or run_status(cfg) != "finished":
        tokens = Path(cfg.token_cache)
        if retrain_net or not (tokens / "index.json").exists():
            shutil.rmtree(tokens, ignore_errors=True)
            write_cache("maskgit", tokenizer=str(run_tok), data="photos", out=tokens)
        size = {k: BidirectionalTransformer.PRESETS[PRESET][k] for k in ("dim", "depth")}
        print(f"training the transformer: {transformer_steps} steps of {BATCH} token maps "
              f"({size['depth']} blocks x {size['dim']}, {len(TokenCache(tokens))} tokenized crops)")
    run_net, report["transformer_trained"] = train_or_load(cfg, retrain=retrain_net)
    if report["transformer_trained"]:
        report["transformer_steps"], ce = _final(run_net, "loss")
        print(f"  {report['transformer_steps']} steps, final masked-token loss {ce:.3f}"
              f" ({time.perf_counter() - t1:.0f} s)")
    else:
        print(f"transformer loaded from {run_net}")
    net = load_model(run_net)
    L = net.seq_len

    test = CropSampler("test", vq.config["resolution"]).sample(2 * len(MASK_KINDS), seed)
    rows, labels = inpaint_grid(vq, net, test, seed=seed)
    out = Path(out)
    save_grid(rows, labels, out)
    report["png"] = str(out)
    print(f"wrote {out}: rows = held-out crops x masks ({', '.join(MASK_KINDS)}), columns = {', '.join(labels)}")

    tp = sampler_throughput(net, seed=seed)
    report.update(tp)
    print(f"sampler throughput (batch 32, 8 steps, {L} tokens/image, {torch.get_num_threads()} threads): "
          f"{tp['fused_tok_s']:.0f} tokens/s fused kernels vs {tp['reference_tok_s']:.0f} tokens/s reference ops "
          f"({tp['speedup']:.2f}x)")
    report["total_s"] = time.perf_counter() - t_start
    print(f"demo done in {report['total_s']:.0f} s")
    return report
