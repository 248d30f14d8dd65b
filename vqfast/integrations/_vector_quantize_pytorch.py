"""vector-quantize-pytorch: VectorQuantize, ResidualVQ and GroupedResidualVQ through their Codebook.

Served exactly (the peer's own value, up to float rounding and ties):
- Codebook.forward: the nearest code (Euclidean, or cosine for unit-norm codebooks) by the
  fused search instead of the N x K distance matrix; the code lookup by a gather instead of
  the one-hot matmul; in training, the EMA cluster sizes and embedding sums from the same
  pass over the rows (nearest_code_with_statistics) instead of the one-hot einsums. The EMA
  blend, dead-code expiry and distributed all-reduce stay the peer's own functions.
- kmeans (the k-means init): each Lloyd step's assignment and sums in one pass.
- rotate_to (the rotation-trick estimator, on by default in training): row reductions and one
  combining pass instead of the peer's [N, d] temporaries and batched matmuls.
Everything else passes through (see `_codebook_servable`), counted in vqfast.integrations.stats().
"""
from __future__ import annotations

import contextvars
import functools
import inspect

import torch
import torch.nn.functional as F

from vqfast import ops
from vqfast.integrations import _rotation
from vqfast.integrations._patch import PatchHandle, check_switches, passed_through, require, served

_PKG = "vector_quantize_pytorch"
# True inside a VectorQuantize.forward that never reads the codebook's distance matrix (no
# cross-entropy commitment, no diversity loss, no indices given): only then may the codebook skip it.
_DISTANCES_UNUSED = contextvars.ContextVar("vqfast_vqp_distances_unused", default=False)
_UNIT_TOL = 1e-4  # |c| within this of 1: cosine similarity and the peer's dot product rank alike


def _unit_rows(t: torch.Tensor) -> bool:
    return bool(((t.detach().float().norm(dim=-1) - 1).abs() <= _UNIT_TOL).all())


def _argmax_choice(codebook, temperature: float, plain_sample) -> bool:
    """Whether the codebook's code choice is a plain argmax of its distances (no Gumbel noise, no
    straight-through softmax), as the fused search returns."""
    fn = codebook.gumbel_sample
    if fn is plain_sample:
        return True
    if not (isinstance(fn, functools.partial) and fn.func is plain_sample and not fn.args
            and set(fn.keywords) <= {"stochastic", "straight_through"}):
        return False  # a user-supplied sampler
    noisy = fn.keywords.get("stochastic", False) or fn.keywords.get("straight_through", False)
    return not (noisy and codebook.training and temperature > 0)


def _codebook_servable(codebook, call: dict, plain_sample, ema: bool) -> bool:
    """Options the fused path reproduces exactly; anything else passes through."""
    temperature = call["sample_codebook_temp"]
    temperature = codebook.sample_codebook_temp if temperature is None else temperature
    updates = codebook.training and call["update_usage"] and not call["freeze_codebook"]
    return (_DISTANCES_UNUSED.get() and call["mask"] is None and call["codebook_transform_fn"] is None
            and call["topk"] is None and not getattr(codebook, "affine_param", False)
            and getattr(codebook, "vq_bridge", None) is None
            and _argmax_choice(codebook, temperature, plain_sample) and (ema or not updates))


def _update_from_statistics(vqp, codebook, flatten, counts, sums, call: dict) -> None:
    """The peer's update_codebook (when it updates: EMA on or dead codes expiring) with the batch's
    cluster sizes [h, K] and embedding sums [h, K, d] given, instead of derived from a one-hot matrix."""
    ema_update = codebook.ema_update if call["ema_update"] is None else call["ema_update"]
    codebook.all_reduce_fn(counts)
    codebook.all_reduce_fn(sums)
    weight = call["ema_update_weight"]
    if callable(weight):
        weight = weight(sums, counts)
    if call["accum_ema_update"]:
        vqp.accum_grad_(codebook.cluster_size, counts)
        vqp.accum_grad_(codebook.embed_avg, sums)
        return
    vqp.ema_inplace(codebook.cluster_size, counts, codebook.decay, weight)
    vqp.ema_inplace(codebook.embed_avg, sums, codebook.decay, weight)
    if ema_update and not codebook.manual_ema_update:
        codebook.update_ema()
    codebook.expire_codes_(flatten)


def _patched_codebook_forward(vqp, original, ema: bool):
    name = f"{_PKG}.Codebook.forward"
    signature = inspect.signature(original)
    plain_sample = vqp.gumbel_sample

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        call = bound.arguments
        if not _codebook_servable(self, call, plain_sample, ema):
            passed_through(name)
            return original(self, *args, **kwargs)
        x = call["x"].float()
        squeeze = x.ndim < 4  # [b, n, d] for one codebook; [h, b, n, d] otherwise
        if squeeze:
            x = x.unsqueeze(0)
        heads, d = x.shape[0], x.shape[-1]
        flatten = x.reshape(heads, -1, d)
        self.init_embed_(flatten)
        embed = (self.embed if self.learnable_codebook else self.embed.detach()).to(flatten.dtype)
        metric = "l2"
        if self.use_cosine_sim:  # the peer ranks by x.c with unit-norm x and c: cosine, if the codes are unit
            if not _unit_rows(embed):
                passed_through(name)
                return original(self, *args, **kwargs)
            metric = "cosine"
        served(name)
        ema_update = self.ema_update if call["ema_update"] is None else call["ema_update"]
        updates = (self.training and call["update_usage"] and not call["freeze_codebook"]
                   and (ema_update or self.has_dead_code_replacement))  # else the peer's update returns at once
        codes, idx, counts, sums = [], [], [], []
        for xh, eh in zip(flatten.detach(), embed):  # the peer's codes carry no gradient to x
            if eh.requires_grad:  # learnable codebook: a gather, whose gradient is the one-hot matmul's
                if updates:
                    i, _, c, s = ops.nearest_code_with_statistics(xh, eh, metric=metric)
                    counts.append(c)
                    sums.append(s)
                else:
                    i, _ = ops.nearest_code(xh, eh, metric=metric)
                code = F.embedding(i, eh)
            elif updates:  # search, gather and EMA statistics in one pass
                (code, i, _), c, s = ops.quantize_with_statistics(xh, eh, metric=metric)
                counts.append(c)
                sums.append(s)
            else:
                code, i, _ = ops.quantize(xh, eh, metric=metric)
            codes.append(code)
            idx.append(i)
        quantize = (codes[0].unsqueeze(0) if heads == 1 else torch.stack(codes)).reshape(x.shape)
        embed_ind = (idx[0].unsqueeze(0) if heads == 1 else torch.stack(idx)).reshape(x.shape[:-1])
        if updates:
            _update_from_statistics(vqp, self, flatten, torch.stack(counts), torch.stack(sums), call)
        if squeeze:
            quantize, embed_ind = quantize[0], embed_ind[0]
        return quantize, embed_ind, None  # distances: unread by the caller (_DISTANCES_UNUSED)

    return forward


def _patched_vq_forward(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        call = signature.bind(self, *args, **kwargs).arguments
        reads = call.get("indices") is not None or (self.training and (
            self.has_codebook_diversity_loss or (self.has_commitment_loss and self.commitment_use_cross_entropy_loss)))
        token = _DISTANCES_UNUSED.set(not reads)
        try:
            return original(self, *args, **kwargs)
        finally:
            _DISTANCES_UNUSED.reset(token)

    return forward


def _patched_kmeans(vqp, original):
    """The peer's Lloyd loop (empty clusters keep their mean; int64 bins) with each step's
    assignment and sums in one nearest_code_with_statistics pass. (vqfast.kmeans re-seeds empty
    clusters with far points, which would change the peer's result, so the loop is kept.)"""
    name = f"{_PKG}.kmeans"
    signature = inspect.signature(original)

    @functools.wraps(original)
    def kmeans(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        samples, K, iters, cosine = (call.arguments[k] for k in ("samples", "num_clusters", "num_iters",
                                                                  "use_cosine_sim"))
        if iters < 1 or not samples.is_floating_point() or (cosine and not _unit_rows(samples)):
            passed_through(name)
            return original(*args, **kwargs)
        served(name)
        metric = "cosine" if cosine else "l2"
        means = call.arguments["sample_fn"](samples, K)
        all_reduce = call.arguments["all_reduce_fn"]
        for _ in range(iters):
            per_head = [ops.nearest_code_with_statistics(s, m, metric=metric) for s, m in zip(samples, means)]
            bins = torch.stack([r.counts for r in per_head]).long()
            all_reduce(bins)
            empty = bins == 0
            new_means = torch.stack([r.sums for r in per_head]).to(samples.dtype)
            new_means = new_means / bins.masked_fill(empty, 1).unsqueeze(-1)
            all_reduce(new_means)
            if cosine:
                new_means = vqp.l2norm(new_means)
            means = torch.where(empty.unsqueeze(-1), means, new_means)
        return means, bins

    return kmeans


def _patched_rotate_to(original):
    name = f"{_PKG}.rotate_to"

    @functools.wraps(original)
    def rotate_to(src, tgt):
        if src.shape != tgt.shape or not src.is_floating_point():
            passed_through(name)
            return original(src, tgt)
        served(name)
        return _rotation.rotate_to(src, tgt)

    return rotate_to


def apply_to_vector_quantize_pytorch(*, codebook: bool = True, ema: bool = True, kmeans_init: bool = True,
                                     rotation_trick: bool = True) -> PatchHandle:
    """Patches vector-quantize-pytorch in place (classes and module functions: models built before
    or after the call). Switches per hot path:

    codebook: Codebook.forward's search and lookup (Euclidean; cosine with unit-norm codes);
    ema: also training-mode forwards, the EMA statistics without a one-hot (needs codebook);
    kmeans_init: the k-means init; rotation_trick: the rotation-trick estimator.
    Returns a PatchHandle (`revert()`, or use it as a context manager).

        handle = vqfast.integrations.apply_to_vector_quantize_pytorch(); ...; handle.revert()
    """
    check_switches(codebook=codebook, ema=ema, kmeans_init=kmeans_init, rotation_trick=rotation_trick)
    require(_PKG, "vector-quantize-pytorch")
    vqp = require(f"{_PKG}.vector_quantize_pytorch", "vector-quantize-pytorch")
    handle = PatchHandle(_PKG)
    if codebook:
        handle.set(vqp.VectorQuantize, "forward", _patched_vq_forward(vqp.VectorQuantize.forward))
        handle.set(vqp.Codebook, "forward", _patched_codebook_forward(vqp, vqp.Codebook.forward, ema))
    if kmeans_init:
        handle.set(vqp, "kmeans", _patched_kmeans(vqp, vqp.kmeans))
    if rotation_trick:
        handle.set(vqp, "rotate_to", _patched_rotate_to(vqp.rotate_to))
    return handle
