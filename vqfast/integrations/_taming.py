"""taming-transformers (PyPI taming-transformers-rom1504): VectorQuantizer2.forward served by
vqfast.ops.quantize. Only its quantize module is imported (the package's models import
torchvision and pytorch-lightning; the quantizer needs neither)."""
from __future__ import annotations

import functools

from vqfast.integrations import _embedding_quantizer
from vqfast.integrations._patch import PatchHandle, check_switches, passed_through, require, served

_NAME = "taming.VectorQuantizer2.forward"


def _patched_forward(original):
    @functools.wraps(original)
    def forward(self, z, temp=None, rescale_logits=False, return_logits=False):
        # temp / rescale_logits / return_logits exist for the Gumbel quantizer's interface: the peer
        # asserts on them, so those calls go to its own code (and its assertion).
        if (temp is not None and temp != 1.0) or rescale_logits or return_logits or z.dim() != 4:
            passed_through(_NAME)
            return original(self, z, temp, rescale_logits, return_logits)
        served(_NAME)
        return _embedding_quantizer.forward(self, z)

    return forward


def apply_to_taming(*, vector_quantizer: bool = True) -> PatchHandle:
    """Patches taming-transformers in place; vector_quantizer: VectorQuantizer2.forward (search,
    lookup, losses in one pass). Returns a PatchHandle (`revert()`, or a context manager).

        with vqfast.integrations.apply_to_taming(): z_q, loss, (_, _, idx) = vqgan.quantize(h)
    """
    check_switches(vector_quantizer=vector_quantizer)
    quantize = require("taming.modules.vqvae.quantize", "taming-transformers-rom1504")
    handle = PatchHandle("taming")
    if vector_quantizer:
        handle.set(quantize.VectorQuantizer2, "forward", _patched_forward(quantize.VectorQuantizer2.forward))
    return handle
