"""Official checkpoints -> vqfast checkpoints (safetensors + JSON), without unpickling code.

    python -m vqfast convert taming-vqgan vqgan_imagenet_f16_1024/ckpts/last.ckpt runs/taming-f16-1024
    vq = vqfast.checkpoint.load("runs/taming-f16-1024")

`convert(system, src, out)` reads `src` weights-only (`vqfast.convert._io.read_state`), maps its
keys onto the vqfast model (unknown, missing and misshapen keys are one ValueError listing them),
writes `out.safetensors` + `out.json` and returns what it mapped.
"""
from __future__ import annotations

from pathlib import Path

from vqfast import checkpoint
from vqfast.convert import mqvae, rqvae, stackformer, taming
from vqfast.convert._io import read_state
from vqfast.convert._mapping import Conversion

SYSTEMS = {"taming-vqgan": taming.convert, "rqvae": rqvae.convert, "mqvae": mqvae.convert,
           "stackformer": stackformer.convert}


def convert(system: str, src, out, *, member: str | None = None, **options) -> Conversion:
    """Convert the official checkpoint `src` of `system` (one of SYSTEMS) into the vqfast checkpoint `out`."""
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {sorted(SYSTEMS)}, got {system!r}")
    result = SYSTEMS[system](read_state(src, member), **options)
    checkpoint.save(result.model, Path(out), extra={"converted_from": str(src), "system": system})
    return result


__all__ = ["SYSTEMS", "Conversion", "convert", "read_state"]
