"""ReFiT (VQ-DDM Sec. 3.2): rebuild a trained tokenizer's codebook by k-means on its encoder features.

Tokenizer protocol (any object with):
  encode_features(images [B, ...]) -> features [B, d, H, W]   pre-quantization encoder output
  quantizer                                                   with .codebook [K, d] and
                                                              .replace_codebook(centroids [K', d])
vqfast's VectorQuantizer provides the quantizer half; a tokenizer only adds encode_features.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from vqfast import ops
from vqfast.ops import _validate
from vqfast.quantizers.clustering import KMeansResult, kmeans
from vqfast.random import as_generator


class RefitTokenizer(Protocol):
    quantizer: object

    def encode_features(self, images: torch.Tensor) -> torch.Tensor: ...


class RefitReport(NamedTuple):
    """usage_before / usage_after: share of codes used on the held-out set with the old
    and the rebuilt codebook; kmeans: the k-means result (centroids, inertia)."""

    usage_before: float
    usage_after: float
    kmeans: KMeansResult


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() < 1 or images.shape[0] < 1:
        raise ValueError("images must be a tensor with at least one image along dim 0")


def _features(tokenizer: RefitTokenizer, images: torch.Tensor, batch_size: int):
    """Yields (first row, features [b, d, H, W]) per batch of images."""
    for b0 in range(0, images.shape[0], batch_size):
        feats = tokenizer.encode_features(images[b0:b0 + batch_size])
        if feats.dim() != 4:
            raise ValueError(f"encode_features must return [B, d, H, W], got shape {tuple(feats.shape)}")
        yield b0, feats


@torch.no_grad()
def sample_features(tokenizer: RefitTokenizer, images: torch.Tensor, P: int, *,
                    generator: torch.Generator | int | None = None, batch_size: int = 64) -> torch.Tensor:
    """P features [P, d] fp32: P images drawn uniformly with replacement, then one uniform
    position of each image's feature map (VQ-DDM Sec. 4.1). Each distinct drawn image is encoded once."""
    _check_images(images)
    P = _validate.integer("P", P, low=1)
    _validate.integer("batch_size", batch_size, low=1)
    generator = as_generator(generator)
    img = torch.randint(images.shape[0], (P,), generator=generator)
    u = torch.rand(P, generator=generator, dtype=torch.float64)  # position = floor(u * H * W)
    order = torch.argsort(img, stable=True)
    wanted = torch.unique(img)
    out = None
    for b0, feats in _features(tokenizer, images[wanted], batch_size):
        B, d, H, W = feats.shape
        if out is None:
            out = torch.empty(P, d, dtype=torch.float32, device=feats.device)
        flat = feats.flatten(2).transpose(1, 2).float()  # [B, H*W, d]
        # rows of `order` whose image is one of this batch's images
        lo = torch.searchsorted(img[order], wanted[b0], right=False)
        hi = torch.searchsorted(img[order], wanted[b0 + B - 1], right=True)
        rows = order[lo:hi]
        local = torch.searchsorted(wanted[b0:b0 + B], img[rows])
        pos = (u[rows] * (H * W)).long().clamp_max(H * W - 1)
        out[rows.to(flat.device)] = flat[local.to(flat.device), pos.to(flat.device)]
    return out


@torch.no_grad()
def codebook_usage(tokenizer: RefitTokenizer, images: torch.Tensor, batch_size: int = 64) -> float:
    """Share of the tokenizer's codes that the nearest-code search picks on images (VQ-DDM Sec. 4.2)."""
    q = tokenizer.quantizer
    cb = q.codebook.detach()
    metric = getattr(q, "metric", "l2")
    seen = torch.zeros(cb.shape[0], dtype=torch.bool, device=cb.device)
    for _, feats in _features(tokenizer, images, batch_size):
        idx, _ = ops.nearest_code(feats.movedim(1, -1), cb, metric=metric)
        seen[idx.reshape(-1).to(cb.device)] = True
    return float(seen.sum()) / cb.shape[0]


@torch.no_grad()
def refit(tokenizer: RefitTokenizer, images: torch.Tensor, P: int = 20000, K: int | None = None, *,
          heldout: torch.Tensor | None = None, iters: int = 25, init: str = "afkmc2", chain_length: int = 200,
          tol: float = 1e-4, generator: torch.Generator | int | None = None, batch_size: int = 64) -> RefitReport:
    """Rebuild the codebook: sample P features, k-means them into K codes (default: the current
    K; VQ-DDM also shrinks K), install the centroids, and report usage on heldout (default: images).

        report = vqfast.quantizers.refit(tokenizer, train_images, P=20000, K=512, heldout=val_images)
    """
    if not hasattr(tokenizer, "encode_features") or not hasattr(tokenizer, "quantizer"):
        raise TypeError("tokenizer must have encode_features(images) -> [B, d, H, W] and a quantizer "
                        "with .codebook and .replace_codebook(centroids) (see vqfast.quantizers.refit)")
    _check_images(images)
    K = tokenizer.quantizer.codebook.shape[0] if K is None else _validate.integer("K", K, low=1)
    P = _validate.integer("P", P, low=1)
    _validate.integer("batch_size", batch_size, low=1)
    generator = as_generator(generator)  # one stream for the feature draws and the seeding
    if P < K:
        raise ValueError(f"P={P} sampled features cannot make K={K} codes: need P >= K (VQ-DDM: P >> K)")
    heldout = images if heldout is None else heldout
    before = codebook_usage(tokenizer, heldout, batch_size)
    feats = sample_features(tokenizer, images, P, generator=generator, batch_size=batch_size)
    if getattr(tokenizer.quantizer, "metric", "l2") == "cosine":
        feats = torch.nn.functional.normalize(feats, dim=1)
    res = kmeans(feats, K, iters, init, generator=generator, chain_length=chain_length, tol=tol)
    tokenizer.quantizer.replace_codebook(res.centroids)
    return RefitReport(before, codebook_usage(tokenizer, heldout, batch_size), res)
