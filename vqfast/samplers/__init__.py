"""Samplers: iterative decoders over token maps (each takes a generator or seed)."""
from vqfast.samplers.maskgit import maskgit_decode, reveal_schedule
from vqfast.samplers.vqddm import vqddm_sample

__all__ = ["maskgit_decode", "reveal_schedule", "vqddm_sample"]
