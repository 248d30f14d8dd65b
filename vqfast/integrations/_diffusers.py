"""diffusers: VQModel's VectorQuantizer (nearest code, straight-through output, losses) and the
aMUSEd scheduler's step (token draw + confidence masking, MaskGIT Sec. 3.2) served by vqfast."""
from __future__ import annotations

import functools
import inspect
import math

import torch

from vqfast import ops
from vqfast.integrations import _embedding_quantizer
from vqfast.integrations._patch import PatchHandle, check_switches, passed_through, require, served

_VQ = "diffusers.VectorQuantizer.forward"
_STEP = "diffusers.AmusedScheduler.step"


def _patched_quantizer_forward(original):
    @functools.wraps(original)
    def forward(self, z):
        if z.dim() != 4:
            passed_through(_VQ)
            return original(self, z)
        served(_VQ)
        return _embedding_quantizer.forward(self, z)

    return forward


def _n_remask(scheduler, timestep, unknown: torch.Tensor, starting_mask_ratio: float) -> torch.Tensor:
    """[B] positions to mask again after this step: floor(L * starting ratio * schedule(progress)),
    at most (still unknown - 1), at least 1; in fp32 tensor arithmetic, as the peer rounds it."""
    step = int((scheduler.timesteps == timestep).nonzero()[0, 0])
    progress = torch.tensor(step + 1, dtype=torch.float32) / len(scheduler.timesteps)
    if scheduler.config.masking_schedule == "cosine":
        ratio = torch.cos(progress * math.pi / 2)
    else:
        ratio = 1 - progress
    n = (unknown.shape[1] * (starting_mask_ratio * ratio)).floor().long()
    return torch.minimum(unknown.sum(1) - 1, n).clamp_min(1)


def _patched_step(module, original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def step(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        logits, timestep, sample, generator = a["model_output"], a["timestep"], a["sample"], a["generator"]
        two_dim = sample.ndim == 3 and logits.ndim == 4
        unknown_seq = (sample.reshape(sample.shape[0], -1) == self.config.mask_token_id) if sample.ndim in (2, 3) else None
        servable = (logits.is_floating_point() and unknown_seq is not None and (two_dim or logits.ndim == 3)
                    and self.config.masking_schedule in ("cosine", "linear")
                    and (timestep == 0 or int((self.timesteps == timestep).sum()) == 1))
        if servable and timestep != 0:
            n_reveal = unknown_seq.sum(1) - _n_remask(self, timestep, unknown_seq, a["starting_mask_ratio"])
            servable = bool((n_reveal >= 0).all())  # else the peer re-masks given tokens: its own code
        if not servable:
            passed_through(_STEP)
            return original(self, *args, **kwargs)
        served(_STEP)
        B = sample.shape[0]
        seq = sample.reshape(B, -1)
        if two_dim:
            logits = logits.reshape(B, logits.shape[1], -1).permute(0, 2, 1)
        if timestep == 0:  # last step: draw the tokens, mask nothing
            tau, n_reveal = 0.0, 0
        else:
            tau = float(self.temperatures[int((self.timesteps == timestep).nonzero()[0, 0])])
        # tokens ~ softmax(logits) everywhere; confidence log p(token) + tau * Gumbel at unknown
        # positions; reveal the n_reveal most confident (the peer re-masks the rest)
        tok, _, reveal = ops.gumbel_topk_select(logits, unknown_seq, n_reveal, tau, "sample", generator=generator)
        pred = torch.where(unknown_seq, tok, seq)
        prev = pred if timestep == 0 else torch.where(unknown_seq & ~reveal, self.config.mask_token_id, pred)
        if two_dim:
            prev, pred = prev.reshape(sample.shape), pred.reshape(sample.shape)
        if not a["return_dict"]:
            return prev, pred
        return module.AmusedSchedulerOutput(prev, pred)

    return step


def apply_to_diffusers(*, vector_quantizer: bool = True, amused_scheduler: bool = True) -> PatchHandle:
    """Patches diffusers in place. vector_quantizer: VQModel's VectorQuantizer.forward (search,
    lookup and losses in one pass); amused_scheduler: AmusedScheduler.step's token draw and
    confidence masking in one pass over the vocabulary (gumbel_topk_select: same distribution,
    vqfast's noise stream). Returns a PatchHandle (`revert()`, or a context manager).

        with vqfast.integrations.apply_to_diffusers(): image = pipe(prompt).images[0]
    """
    check_switches(vector_quantizer=vector_quantizer, amused_scheduler=amused_scheduler)
    handle = PatchHandle("diffusers")
    if vector_quantizer:
        vae = require("diffusers.models.autoencoders.vae", "diffusers")
        handle.set(vae.VectorQuantizer, "forward", _patched_quantizer_forward(vae.VectorQuantizer.forward))
    if amused_scheduler:
        sched = require("diffusers.schedulers.scheduling_amused", "diffusers")
        handle.set(sched.AmusedScheduler, "step", _patched_step(sched, sched.AmusedScheduler.step))
    return handle
