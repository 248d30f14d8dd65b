"""The metrics of each kind of stage on held-out images: tokenizers are scored on their
reconstructions (PSNR, SSIM, LPIPS, codebook usage and perplexity, FID), PUT's transformer on its
inpainting (PSNR / SSIM inside the hole, LPIPS, FID), the other token models on samples (FID against
the held-out images, IS of class-conditional samples; codebook usage of the sampled tokens).
Under torchrun each rank takes a contiguous share of the batches (batch b draws its samples from
seed + b, as in one process) and the metrics cover every rank's images."""
from __future__ import annotations

import math

import torch

from vqfast.train import distributed
from vqfast.train.data import collate
from vqfast.train.metrics import FID, InceptionScore, codebook_stats, psnr_ssim


def _batches(images, batch_size: int, max_images: int, rank: int = 0, world_size: int = 1):
    """(batch index, images, labels) of this rank's contiguous share of the batches."""
    n = min(len(images), max_images)
    count = -(-n // batch_size)
    for b in range(count * rank // world_size, count * (rank + 1) // world_size):
        lo = b * batch_size
        x, labels, _ = collate([images[(i, None)] for i in range(lo, min(n, lo + batch_size))])
        yield b, x, labels


def _labels(model, labels: torch.Tensor) -> torch.Tensor | None:
    n = int(model.config.get("num_classes", 0) or 0)
    return labels.clamp(0, n - 1) if n else None


@torch.no_grad()
def generate(stage, model, tokenizer, x: torch.Tensor, labels: torch.Tensor, generator: int,
              steps: int | None = None):
    """(images in [-1, 1], tokens, score mask or None) the stage's model makes for one batch;
    steps: decoding steps of MaskGIT / VQ-DDM (None: the sampler's default)."""
    opt = {} if steps is None else {"steps": steps}
    f, B = stage.family, x.shape[0]
    cls = _labels(model, labels)
    if f == "put":
        from vqfast.models.put import put_sample
        from vqfast.train.families import _put_masks
        mask = _put_masks(x, torch.Generator().manual_seed(generator))
        out = put_sample(tokenizer, model, x, mask, generator=generator)
        images = out.images[:, 0] if out.images.dim() == 5 else out.images
        return images, out.tokens, mask
    if f == "maskgit":
        from vqfast.models.maskgit import maskgit_decode
        tokens = maskgit_decode(model, batch_size=B, class_labels=cls, generator=generator, **opt).tokens
        return tokenizer.decode_tokens(tokens.reshape(B, *tokenizer.token_shape)), tokens, None
    if f == "vqddm":
        from vqfast.models.vqddm import vqddm_sample
        tokens = vqddm_sample(model, batch_size=B, class_labels=cls, generator=generator, **opt).tokens
        return tokenizer.decode_tokens(tokens), tokens, None
    if f == "rq":
        from vqfast.models.rq import draft_and_revise
        tokens = draft_and_revise(model, batch_size=B, class_labels=cls, generator=generator).tokens
        return tokenizer.decode_tokens(tokens), tokens, None
    from vqfast.models.mqvae import stackformer_sample
    out = stackformer_sample(model, batch_size=B, num_tokens=tokenizer.num_kept, class_labels=cls, generator=generator)
    return tokenizer.decode_tokens(out.tokens, out.positions), out.tokens, None


@torch.no_grad()
def stage_metrics(stage, model, tokenizer, images, features, *, batch_size: int, max_images: int,
                  device: torch.device, seed: int = 0, sample_steps: int | None = None, logits=None,
                  lpips=None, ctx=None) -> dict[str, float]:
    """Metrics of `model` (a trained stage) over the first max_images of `images`; FID when
    `features` (an Inception feature extractor) is given, IS of the samples when `logits` (Inception
    class logits) is, LPIPS of reconstructions / inpaintings when `lpips` (e.g. `VGGPerceptual`) is;
    sample_steps as in `generate`; ctx: the `distributed.Context` of this rank (None: one process)."""
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    fid = FID(features, device) if features is not None else None
    score = InceptionScore(logits, device=device) if logits is not None else None
    sums: dict[str, float] = {}
    tokens, n = [torch.empty(0, dtype=torch.long)], 0
    for b, x, labels in _batches(images, batch_size, max_images, rank, world):
        x, labels = x.to(device), labels.to(device)
        if stage.name == "model":
            fake, toks, mask = generate(stage, model, tokenizer, x, labels, seed + b, sample_steps)
        else:
            if stage.family == "put":
                out = model(x, torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool, device=device))
            else:
                out = model(x)
            fake, toks, mask = out.reconstruction, out.tokens, None
        if stage.name != "model" or mask is not None:
            scores = psnr_ssim(x, fake.float(), mask)
            if lpips is not None:
                scores["lpips"] = float(lpips(x.float(), fake.float()))
            for k, v in scores.items():
                sums[k] = sums.get(k, 0.0) + v * x.shape[0]
        if score is not None:
            score.update(fake)
        tokens.append(toks.reshape(-1).cpu())
        n += x.shape[0]
        if fid is not None:
            fid.update(x, real=True)
            fid.update(fake, real=False)
    if ctx is not None and ctx.distributed:  # every rank's sums, counts and tokens, in rank order
        parts = distributed.gather((sums, n), ctx)
        sums = {k: sum(p.get(k, 0.0) for p, _ in parts) for k in dict.fromkeys(k for p, _ in parts for k in p)}
        n = sum(m for _, m in parts)
        tokens = list(distributed.gather_cat(torch.cat(tokens), ctx=ctx))
    report = {k: v / n for k, v in sums.items()}
    K = getattr(tokenizer if stage.name == "model" else model, "codebook_size", None)
    if K is not None:
        report.update(codebook_stats(torch.cat(tokens), K))
    if fid is not None and n < 2:
        report["fid_skipped"] = f"FID needs at least 2 images (covariances), got {n}"
    elif fid is not None:  # torchmetrics sums the ranks' statistics (a collective call)
        report["fid"] = fid.compute()
    if score is not None:
        mean, std = score.compute(seed, ctx)
        report.update({"is": mean} if math.isnan(std) else {"is": mean, "is_std": std})
    return report
