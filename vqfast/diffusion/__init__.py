"""Discrete diffusion for VQ token maps (VQ-DDM Sec. 3.1, eqs. 15-19): the cosine schedule,
the transition kinds ("uniform": multinomial, VQ-DDM; "absorbing": mask) and the forward
process. The fused posterior ops (log-probs, sampling, VLB KL) are in `vqfast.ops`.
"""
from vqfast.diffusion.forward import q_sample
from vqfast.diffusion.schedule import TRANSITIONS, CosineSchedule

__all__ = ["CosineSchedule", "TRANSITIONS", "q_sample"]
