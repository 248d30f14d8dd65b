"""Discrete diffusion for VQ token maps (DESIGN.md op 10; VQ-DDM seed Sec. 3.1, eqs. 15-24).

Uniform (multinomial, VQ-DDM) and absorbing-state (mask) transitions behind one API
(`transition="uniform"|"absorbing"`): the cosine schedule, the forward process, and the
fused posterior ops (log-probs, a mixture sample without per-state noise, VLB KL with a fused backward).
"""
from vqfast.diffusion.forward import q_sample
from vqfast.diffusion.posterior import posterior_logprobs, posterior_sample
from vqfast.diffusion.schedule import CosineSchedule
from vqfast.diffusion.vlb import vlb_kl
from vqfast.diffusion._args import HAS
from vqfast.reference.diffusion import TRANSITIONS

__all__ = ["CosineSchedule", "HAS", "TRANSITIONS", "posterior_logprobs", "posterior_sample", "q_sample", "vlb_kl"]
