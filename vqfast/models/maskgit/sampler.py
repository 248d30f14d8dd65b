"""MaskGIT iterative decoding and inpainting (MaskGIT Sec. 3.2).

Step t = 0..T-1 (r = (t+1)/T): run the transformer on the current tokens, choose a
token for every masked position (argmax or a sample), score it with
confidence = log p(token) + tau_t * Gumbel, tau_t = choice_temperature * (1 - r), and
reveal the most confident masked positions so that
    remaining_t = min(floor(n0 * gamma(r)), masked_t - 1)   (0 at the last step)
positions stay masked (n0: the masked count at the start, per image). Known tokens are
never changed. Selection runs through `vqfast.ops.gumbel_topk_select`, so `backend`
picks fused kernels or the PyTorch reference.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from vqfast import ops
from vqfast.ops import _validate
from vqfast.random import as_generator
from vqfast.models.common.masking import SCHEDULES, mask_ratio
from vqfast.models.common.inference import low_precision
from vqfast.models.common.checks import check_batch_size


class MaskGITSample(NamedTuple):
    """`maskgit_decode`'s result: tokens (the shape of `known`, or [B, L]) and, with
    return_history, history bool [steps_run + 1, B, L]: the positions still masked before
    each step and at the end (None otherwise)."""

    tokens: torch.Tensor
    history: torch.Tensor | None = None


def reveal_schedule(n_masked: torch.Tensor, steps: int, schedule: str) -> torch.Tensor:
    """How many positions each step reveals: int64 [steps, B] for n_masked [B] tokens
    to generate. Every step with tokens left reveals at least one; the last reveals
    the rest, so each column sums to n_masked.

        reveal_schedule(torch.tensor([64]), 4, "cosine")   # [[5], [14], [20], [25]]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    n0 = n_masked.to(torch.int64).cpu()
    masked, out = n0.clone(), []
    for t in range(steps):
        r = torch.full(n0.shape, (t + 1) / steps, dtype=torch.float64)
        target = torch.floor(n0.double() * mask_ratio(schedule, r, n0)).long()
        remaining = torch.minimum(target, (masked - 1).clamp_min(0)) if t < steps - 1 else torch.zeros_like(n0)
        out.append(masked - remaining)
        masked = remaining
    return torch.stack(out)


def _logits(model: Callable, tokens, class_labels, guidance_scale, null_class, autocast_dtype):
    with torch.autocast(tokens.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        if class_labels is None or guidance_scale == 1.0:
            return model(tokens, class_labels) if class_labels is not None else model(tokens)
        both = model(torch.cat([tokens, tokens]), torch.cat([class_labels, torch.full_like(class_labels, null_class)]))
    cond, uncond = both.float().chunk(2)
    return uncond + guidance_scale * (cond - uncond)  # classifier-free guidance


@torch.no_grad()
def maskgit_decode(model: Callable, known: torch.Tensor | None = None, mask: torch.Tensor | None = None, *,
                   batch_size: int | None = None, class_labels: torch.Tensor | None = None,
                   generator: torch.Generator | int | None = None, backend: str = "auto", progress: bool = False,
                   return_history: bool = False, steps: int = 8, schedule: str = "cosine",
                   choice_temperature: float = 4.5, choice: str = "argmax", sample_temperature: float = 1.0,
                   sweet_spot: int | None = None, guidance_scale: float = 1.0,
                   autocast_dtype: torch.dtype | None = None) -> MaskGITSample:
    """Generate (known=None) or inpaint token maps with MaskGIT's iterative decoding.

    model: a BidirectionalTransformer (or any callable tokens [B, L] (, class_labels) ->
        logits [B, L, K] that has `mask_id` and `seq_len`).
    known: int64 [B, L] or [B, h, w] token maps (values under `mask` are ignored).
    mask: bool, same shape, True = generate; each image may have its own mask. Without
        known, batch_size images are generated from an all-[MASK] map.
    class_labels [B] and guidance_scale s: logits = uncond + s * (cond - uncond)
        (s = 1: conditional only, no extra forward).
    generator: torch.Generator or int seed (same seed -> same tokens).
    steps T, schedule (see vqfast.models.common.masking.SCHEDULES), choice_temperature (4.5,
        annealed by 1 - (t+1)/T), choice "argmax" | "sample" (sample_temperature scales
        the logits), sweet_spot: stop after that many steps and fill what is still
        masked with that step's choices (None = run T steps).
    autocast_dtype: run the transformer's blocks in this dtype (None: fp32; e.g.
        torch.bfloat16). A model made of vqfast `Block`s runs as
        `vqfast.models.common.inference.inference_copy(model, dtype)`: on CPU oneDNN-packed block
        weights, fp32 residual stream, LayerNorms and head, fp32 logits. Any other
        callable runs as it is (under torch.autocast for bf16).
    Returns MaskGITSample(tokens, history): tokens of the shape of `known` ([B, L] when
    generating), history with return_history (see MaskGITSample).

        out = maskgit_decode(net, tokens, box_mask, steps=8, generator=0).tokens
    """
    if choice not in ("argmax", "sample"):
        raise ValueError(f"choice must be 'argmax' or 'sample', got {choice!r}")
    choice_temperature = _validate.real("choice_temperature", choice_temperature, low=0.0)
    sample_temperature = _validate.real("sample_temperature", sample_temperature, low=0.0, low_open=True)
    guidance_scale = _validate.real("guidance_scale", guidance_scale)
    if sweet_spot is not None and not (isinstance(sweet_spot, int) and 1 <= sweet_spot <= steps):
        raise ValueError(f"sweet_spot must be an int in [1, steps={steps}] or None, got {sweet_spot!r}")
    L, mask_id = model.seq_len, model.mask_id
    device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else torch.device("cpu")
    if known is None:
        if batch_size is None and mask is None:
            raise ValueError("give known (+ mask) to inpaint, or batch_size to generate")
        check_batch_size(batch_size)
        if mask is None:
            mask = torch.ones(batch_size, L, dtype=torch.bool, device=device)
        elif not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
        elif batch_size is not None and mask.shape[0] != batch_size:
            raise ValueError(f"mask holds {mask.shape[0]} maps but batch_size={batch_size}")
        known = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
    elif mask is None:
        raise ValueError("known given without mask: nothing to generate (mask True = generate)")
    if not isinstance(known, torch.Tensor) or known.dtype != torch.long:
        raise TypeError(f"known must be an int64 tensor, got {getattr(known, 'dtype', type(known))}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
    if mask.shape != known.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal known shape {tuple(known.shape)}")
    shape = known.shape
    B = shape[0]
    if B == 0 or known[0].numel() != L:
        raise ValueError(f"known must hold B >= 1 maps of seq_len={L} positions, got shape {tuple(shape)}")
    if batch_size is not None and batch_size != B:
        raise ValueError(f"batch_size={batch_size!r} disagrees with known's batch {B}")
    kept = known[~mask]
    if kept.numel() and (kept.min() < 0 or kept.max() >= mask_id):
        raise ValueError(f"known tokens outside the mask must lie in [0, {mask_id}), "
                         f"got range [{int(kept.min())}, {int(kept.max())}]")
    if hasattr(model, "check_class_labels"):
        model.check_class_labels(class_labels, B)
    elif class_labels is not None and tuple(class_labels.shape) != (B,):
        raise ValueError(f"class_labels must be [B={B}], got {tuple(class_labels.shape)}")
    masked = mask.reshape(B, L).to(device)
    cur = known.reshape(B, L).to(device).masked_fill(masked, mask_id)
    plan = reveal_schedule(masked.sum(1), steps, schedule).to(device)
    g = as_generator(generator, device)
    guided = class_labels is not None and guidance_scale != 1.0
    model, autocast_dtype = low_precision(model, autocast_dtype, batch_hint=B * L * (2 if guided else 1))
    n_steps = sweet_spot or steps
    history = [masked.clone()] if return_history else None
    it = range(n_steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="maskgit", unit="step")
    for t in it:
        logits = _logits(model, cur, class_labels, guidance_scale, getattr(model, "num_classes", 0), autocast_dtype)
        if choice == "sample" and sample_temperature != 1.0:
            logits = logits / sample_temperature
        tau = choice_temperature * (1.0 - (t + 1) / steps)
        chosen, _, reveal = ops.gumbel_topk_select(logits, masked, plan[t], tau, choice=choice, generator=g,
                                                   backend=backend)
        if t == n_steps - 1:
            reveal = masked  # last step run (T or the sweet spot): fill every masked position
        cur = torch.where(reveal, chosen, cur)
        masked = masked & ~reveal
        if return_history:
            history.append(masked.clone())
    return MaskGITSample(cur.reshape(shape), torch.stack(history) if return_history else None)
