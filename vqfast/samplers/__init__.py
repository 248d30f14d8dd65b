"""Samplers: iterative decoders over token maps (each takes a generator or seed)."""
from vqfast.samplers.maskgit import maskgit_decode, reveal_schedule
from vqfast.samplers.put import put_fill, put_sample
from vqfast.samplers.stackformer import stackformer_sample
from vqfast.samplers.vqddm import vqddm_sample

__all__ = ["maskgit_decode", "put_fill", "put_sample", "reveal_schedule", "stackformer_sample", "vqddm_sample"]
