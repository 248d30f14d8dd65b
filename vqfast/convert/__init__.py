"""Official checkpoints -> vqfast checkpoints (safetensors + JSON), without unpickling code.

    python -m vqfast convert taming-vqgan vqgan_imagenet_f16_1024/ckpts/last.ckpt runs/taming-f16-1024
    vq = vqfast.checkpoint.load("runs/taming-f16-1024")

`convert(system, src, out)` reads `src` weights-only (`vqfast.convert._io.read_state`), maps its
keys onto the vqfast model (unknown, missing and misshapen keys are one ValueError listing them),
writes `out.safetensors` + `out.json` and returns what it mapped. A checkpoint holding two
stages (a PUT transformer with its P-VQVAE) gives `out-<stage>.safetensors` / `.json` per stage
and returns {stage: Conversion}.
"""
from __future__ import annotations

from pathlib import Path

from vqfast import checkpoint
from vqfast.convert import mqvae, put, rqvae, stackformer, taming
from vqfast.convert._io import read_state
from vqfast.convert._mapping import Conversion

SYSTEMS = {"taming-vqgan": taming.convert, "rqvae": rqvae.convert, "put": put.convert, "mqvae": mqvae.convert,
           "stackformer": stackformer.convert}


def convert(system: str, src, out, *, member: str | None = None, **options) -> Conversion | dict[str, Conversion]:
    """Convert the official checkpoint `src` of `system` (one of SYSTEMS) into the vqfast checkpoint `out`
    (or `out-<stage>` per stage when `src` holds several)."""
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {sorted(SYSTEMS)}, got {system!r}")
    result = SYSTEMS[system](read_state(src, member), **options)
    for stage, part in (result.items() if isinstance(result, dict) else [(None, result)]):
        path = Path(out) if stage is None else Path(f"{out}-{stage}")
        checkpoint.save(part.model, path, extra={"converted_from": str(src), "system": system})
    return result


__all__ = ["SYSTEMS", "Conversion", "convert", "read_state"]
