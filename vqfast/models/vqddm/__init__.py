"""VQ-DDM (Hu et al., CVPR 2022): discrete diffusion over token maps: the eq. 23 denoiser
(U-Net or transformer) with its noise schedule and VLB loss (importance-sampled t), the
strided reverse process with inpainting, and ReFiT."""
from vqfast.models.vqddm.denoiser import VQDDM
from vqfast.models.vqddm.objective import ImportanceSampler
from vqfast.models.vqddm.refit import finetune_decoder, refit_tokenizer
from vqfast.models.vqddm.sampler import VQDDMSample, vqddm_sample

__all__ = ["ImportanceSampler", "VQDDM", "VQDDMSample", "finetune_decoder", "refit_tokenizer", "vqddm_sample"]
