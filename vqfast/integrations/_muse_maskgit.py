"""muse-maskgit-pytorch: the token draw of MaskGit.generate (and of its critic training), a
Gumbel-max over the top-k filtered logits, served by vqfast.ops.sample_logits in one pass
over the vocabulary (no [B, L, V] noise tensor). Same distribution, vqfast's noise stream,
reproducible from torch.manual_seed (the key is drawn from torch's generator)."""
from __future__ import annotations

import functools

from vqfast import ops
from vqfast.integrations._patch import PatchHandle, check_switches, passed_through, require, served

_NAME = "muse_maskgit_pytorch.gumbel_sample"
_MIN_TEMPERATURE = 1e-10  # the peer's floor: below it the draw is its argmax


def _patched_gumbel_sample(original):
    @functools.wraps(original)
    def gumbel_sample(t, temperature=1., dim=-1):
        if dim not in (-1, t.dim() - 1) or not t.is_floating_point() or t.dim() < 1:
            passed_through(_NAME)
            return original(t, temperature, dim)
        served(_NAME)
        tau = float(temperature)
        return ops.sample_logits(t, tau if tau > _MIN_TEMPERATURE else 0.0)

    return gumbel_sample


def apply_to_muse_maskgit(*, sampler: bool = True) -> PatchHandle:
    """Patches muse-maskgit-pytorch in place; sampler: the Gumbel-max token draw in
    MaskGit.generate. Returns a PatchHandle (`revert()`, or a context manager).

        with vqfast.integrations.apply_to_muse_maskgit(): images = maskgit.generate(texts)
    """
    check_switches(sampler=sampler)
    muse = require("muse_maskgit_pytorch.muse_maskgit_pytorch", "muse-maskgit-pytorch")
    handle = PatchHandle("muse_maskgit_pytorch")
    if sampler:
        handle.set(muse, "gumbel_sample", _patched_gumbel_sample(muse.gumbel_sample))
    return handle
