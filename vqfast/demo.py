"""`python -m vqfast demo`: MaskGIT inpainting end to end on a CPU in minutes.

1. Train the tiny VQGAN tokenizer (32x32 photo crops -> 8x8 tokens, 256 codes) on the
   bundled photos, or load it from the cache directory.
2. Tokenize a pool of training crops and train a small BidirectionalTransformer with
   MVTM (cosine gamma), or load it from the cache.
3. Inpaint held-out crops (the right-hand strip of every photo, never trained on) with
   box / outside / strokes / half masks, several samples each, and write a PNG grid:
   masked input | completions | VQ reconstruction | ground truth.
4. Time `maskgit_decode` with the fused kernels (backend="auto") and with the
   reference ops (backend="reference"), same model and seed, and print tokens/s.

The training loops (`train_tokenizer`, `train_transformer`) are reused by
examples/train_maskgit.py.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from vqfast import checkpoint
from vqfast.data import (
    MASK_KINDS,
    CropSampler,
    make_masks,
    pixel_to_token_mask,
    token_to_pixel_mask,
)
from vqfast.models.common.vqgan import VQGAN
from vqfast.models.maskgit import BidirectionalTransformer, maskgit_decode
from vqfast.progress import progress_bar
from vqfast.random import as_generator
from vqfast.visualize import save_grid

DEMO_VERSION = 1  # bump when the recipe changes so stale caches are retrained
# the "tiny" presets: the whole demo needs about 7 CPU-minutes on one core of this machine (2 cores: less)
PRESET = "tiny"


def default_cache_dir() -> Path:
    return Path(os.environ.get("VQFAST_CACHE", Path.home() / ".cache" / "vqfast")) / f"demo-v{DEMO_VERSION}"


def _cosine_lr(opt, step: int, steps: int, lr: float, warmup: int) -> None:
    scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    for group in opt.param_groups:
        group["lr"] = lr * max(scale, 0.05)


def train_tokenizer(vq: VQGAN, data: CropSampler, steps: int, *, batch: int = 32, lr: float = 2e-3, seed: int = 0,
                    budget_s: float | None = None, progress: bool = True, log: list | None = None) -> int:
    """Train vq on crops from data (channels-last convs: ~2x faster on CPU). Returns steps run;
    stops early when budget_s seconds have passed. log collects (step, rec loss)."""
    g = as_generator(seed)
    vq.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(vq.parameters(), lr=lr, betas=(0.5, 0.9), weight_decay=0.0, fused=True)
    t0, bar = time.perf_counter(), progress_bar(steps, "tokenizer", progress)
    for step in range(steps):
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
        _cosine_lr(opt, step, steps, lr, warmup=20)
        x = data.sample(batch, g).contiguous(memory_format=torch.channels_last)
        loss, logs = vq(x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log is not None:
            log.append((step, float(logs["rec"])))
        bar.update(1)
        bar.set_postfix(rec=f"{logs['rec']:.3f}", refresh=False)
    bar.close()
    vq.eval().to(memory_format=torch.contiguous_format)
    return step + 1 if steps else 0


@torch.no_grad()
def tokenize(vq: VQGAN, data: CropSampler, n: int, *, seed: int = 1, batch: int = 256) -> torch.Tensor:
    """n random crops of data -> tokens int64 [n, h*w]."""
    g = as_generator(seed)
    out = [vq.encode(data.sample(min(batch, n - i), g)).flatten(1) for i in range(0, n, batch)]
    return torch.cat(out)


def train_transformer(net: BidirectionalTransformer, tokens: torch.Tensor, steps: int, *, batch: int = 32,
                      lr: float = 1e-3, seed: int = 0, budget_s: float | None = None, progress: bool = True,
                      log: list | None = None) -> int:
    """MVTM training (`net.loss`) on a token pool [N, L] (minibatches drawn with replacement).
    Returns steps run."""
    g = as_generator(seed)
    net.train()
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2 and "emb" not in n]
    other = [p for n, p in net.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), fused=True)
    t0, bar = time.perf_counter(), progress_bar(steps, "transformer", progress)
    for step in range(steps):
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
        _cosine_lr(opt, step, steps, lr, warmup=50)
        loss = net.loss(tokens[torch.randint(len(tokens), (batch,), generator=g)], generator=g).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if log is not None:
            log.append((step, float(loss.detach())))
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    bar.close()
    net.eval()
    return step + 1 if steps else 0


def tokenizer_recipe(steps: int, seed: int) -> dict:
    """What the cached tokenizer was trained with (its checkpoint's extra["recipe"])."""
    return {"tokenizer": VQGAN.PRESETS[PRESET], "steps": steps, "seed": seed}


def transformer_recipe(steps: int, seed: int, tokenizer_extra: dict) -> dict:
    """What the cached transformer was trained with; the size is recorded as dim / depth / heads."""
    size = {k: BidirectionalTransformer.PRESETS[PRESET][k] for k in ("dim", "depth", "heads")}
    return {"transformer": size, "steps": steps, "seed": seed, "tokenizer": tokenizer_extra}


def cached(path: Path, expected: type, recipe: dict):
    """The checkpoint at path if it was trained with `recipe`, else None."""
    try:  # compare as JSON stores it (tuples become lists)
        if checkpoint.read_config(path)["extra"].get("recipe") == json.loads(json.dumps(recipe)):
            return checkpoint.load(path, expected=expected)
    except (FileNotFoundError, ValueError):
        pass
    return None


@torch.no_grad()
def inpaint_grid(vq: VQGAN, net: BidirectionalTransformer, data: CropSampler, *, n_images: int = 2,
                 n_samples: int = 3, steps: int = 8, seed: int = 0) -> tuple[list, list[str]]:
    """For each mask kind and each of n_images held-out crops: masked input, n_samples
    completions (choice="sample"; known pixels pasted back), VQ reconstruction, truth."""
    x = data.sample(n_images * len(MASK_KINDS), seed)
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
    resolution = VQGAN.PRESETS[PRESET]["resolution"]
    train, test = CropSampler("train", resolution), CropSampler("test", resolution)
    budget = budget_minutes * 60
    report: dict = {}

    recipe = tokenizer_recipe(tokenizer_steps, seed)
    vq = None if retrain else cached(cache / "tokenizer", VQGAN, recipe)
    if vq is None:
        print(f"training the tokenizer: {tokenizer_steps} steps of 32 crops (32x32 -> 8x8 tokens, 256 codes)")
        vq = VQGAN.from_preset(PRESET, seed=seed)
        log: list = []
        ran = train_tokenizer(vq, train, tokenizer_steps, seed=seed, budget_s=0.5 * budget, progress=progress, log=log)
        report["tokenizer_steps"] = ran
        checkpoint.save(vq, cache / "tokenizer", extra={"recipe": recipe, "steps_run": ran})
        print(f"  {ran} steps, final L1 {sum(r for _, r in log[-20:]) / len(log[-20:]):.3f}")
    else:
        print(f"tokenizer loaded from {cache / 'tokenizer.safetensors'}")
    report["tokenizer_s"] = time.perf_counter() - t_start

    L = vq.token_hw[0] * vq.token_hw[1]
    recipe_t = transformer_recipe(transformer_steps, seed, checkpoint.read_config(cache / "tokenizer")["extra"])
    net = None if retrain else cached(cache / "transformer", BidirectionalTransformer, recipe_t)
    if net is None:
        t1 = time.perf_counter()
        pool = tokenize(vq, train, 4096, seed=seed + 1)
        print(f"training the transformer: {transformer_steps} steps of 32 token maps "
              f"({recipe_t['transformer']['depth']} blocks x {recipe_t['transformer']['dim']}, "
              f"pool of {len(pool)} tokenized crops)")
        net = BidirectionalTransformer.from_preset(PRESET, codebook_size=vq.codebook_size, seq_len=L)
        log = []
        left = budget - (time.perf_counter() - t_start) - 60  # keep a minute for sampling and timing
        ran = train_transformer(net, pool, transformer_steps, seed=seed, budget_s=max(left, 30), progress=progress,
                                log=log)
        report["transformer_steps"] = ran
        checkpoint.save(net, cache / "transformer", extra={"recipe": recipe_t, "steps_run": ran})
        print(f"  {ran} steps, final masked-token loss {sum(v for _, v in log[-20:]) / len(log[-20:]):.3f}"
              f" ({time.perf_counter() - t1:.0f} s)")
    else:
        print(f"transformer loaded from {cache / 'transformer.safetensors'}")
    net.eval()

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
