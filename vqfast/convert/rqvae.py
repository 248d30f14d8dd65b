"""kakaobrain/rq-vae-transformer RQ-VAE (`rqvae/models/rqvae/rqvae.py`) -> `vqfast.models.rq.RQVAE`.

Encoder / decoder as `vqfast.convert.conv_layout` (the same code as taming's). The quantizer
(`RQBottleneck`): one codebook shared by the D depths, stored as `quantizer.codebooks.{d}.weight`
[K + 1, dim] whose last row is a padding embedding never chosen (`weight[:-1]` are the codes),
with EMA buffers `cluster_size_ema` [K] and `embed_ema` [K, dim] (vqfast's cluster_size and
embed_sum: the same EMA with Laplace smoothing, decay 0.99, restart of unused codes).
The depth D is not stored in the weights: pass it (`code_depth`, 4 in every released model).
"""
from __future__ import annotations

import torch

from vqfast.convert import conv_layout
from vqfast.convert._mapping import Conversion, load_mapped, matrix_shape
from vqfast.models.rq.tokenizer import RQVAE


def convert(state: dict[str, torch.Tensor], *, resolution: int = 256, code_depth: int = 4) -> Conversion:
    """An RQVAE holding an official RQ-VAE's weights (state: its state dict)."""
    key = "quantizer.codebooks.0.weight"
    if key not in state:
        raise ValueError(f"not an RQ-VAE state dict: no {key!r}")
    depths = {int(k.split(".")[2]) for k in state if k.startswith("quantizer.codebooks.")}
    if any(not torch.equal(state[f"quantizer.codebooks.{d}.weight"], state[key]) for d in depths):
        raise ValueError("the RQ-VAE checkpoint has one codebook per depth; only the shared codebook of the "
                         "released models is supported")
    rows, dim = matrix_shape(state, key)
    model = RQVAE(**conv_layout.infer_config(state, resolution, dim), codebook_size=rows - 1, code_depth=code_depth)
    keys = conv_layout.key_map(model)
    keys["quantizer.codebooks.0.embed"] = ((lambda s: s[key][:-1]), (key,))
    keys["quantizer.codebooks.0.cluster_size"] = "quantizer.codebooks.0.cluster_size_ema"
    keys["quantizer.codebooks.0.embed_sum"] = "quantizer.codebooks.0.embed_ema"
    # the shared codebook's other depths repeat depth 0 (one ModuleList entry per depth)
    shared = tuple(f"quantizer.codebooks.{d}.{n}" for d in sorted(depths - {0})
                   for n in ("weight", "cluster_size_ema", "embed_ema"))
    keys["quantizer.codebooks.0.initted"] = (lambda s: torch.tensor(True), shared)
    return load_mapped(model, state, keys, source="RQ-VAE checkpoint")
