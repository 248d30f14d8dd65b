"""taming-transformers VQGAN (`taming.models.vqgan.VQModel`) -> `vqfast.models.common.vqgan.VQGAN`.

Encoder / decoder as `vqfast.convert.conv_layout`; the codebook `quantize.embedding.weight`
(VectorQuantizer2, learned by gradient) becomes the VQGAN's codebook. The discriminator and
LPIPS weights of the training loss (`loss.*`) are skipped.
"""
from __future__ import annotations

import torch

from vqfast.convert import conv_layout
from vqfast.convert._mapping import Conversion, load_mapped, matrix_shape
from vqfast.models.common.vqgan import VQGAN


def convert(state: dict[str, torch.Tensor], *, resolution: int = 256) -> Conversion:
    """A VQGAN holding a taming VQModel's weights (state: its state dict)."""
    if "quantize.embedding.weight" not in state:
        raise ValueError("not a taming VQGAN state dict: no 'quantize.embedding.weight'")
    K, dim = matrix_shape(state, "quantize.embedding.weight")
    model = VQGAN(**conv_layout.infer_config(state, resolution, dim), codebook_size=K, decay=None,
                  threshold_dead_code=None, kmeans_init=False)
    keys = conv_layout.key_map(model)
    keys["quantizer.codebook_state.embed"] = "quantize.embedding.weight"
    keys["quantizer.codebook_state.initted"] = (lambda s: torch.tensor(True), ())  # a loaded codebook is initialized
    return load_mapped(model, state, keys, ignore=("loss.",), source="taming VQGAN checkpoint")
