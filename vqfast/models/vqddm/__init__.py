"""VQ-DDM (Hu et al., CVPR 2022): discrete diffusion over token maps: the eq. 23 denoiser
(U-Net or transformer), the VLB objective with importance-sampled t, the strided reverse
process with inpainting, and ReFiT."""
from vqfast.models.vqddm.denoiser import VQDDM
from vqfast.models.vqddm.objective import ImportanceSampler, vlb_loss
from vqfast.models.vqddm.refit import finetune_decoder, refit_tokenizer
from vqfast.models.vqddm.sampler import vqddm_sample

__all__ = ["ImportanceSampler", "VQDDM", "finetune_decoder", "refit_tokenizer", "vlb_loss", "vqddm_sample"]
