"""MaskGIT (Chang et al., CVPR 2022): bidirectional transformer with its MVTM training loss, and
iterative decoding / inpainting. Its tokenizer is the shared taming VQGAN, `vqfast.models.common.vqgan.VQGAN`."""
from vqfast.models.maskgit.sampler import MaskGITSample, maskgit_decode, reveal_schedule
from vqfast.models.maskgit.transformer import BidirectionalTransformer

__all__ = ["BidirectionalTransformer", "MaskGITSample", "maskgit_decode", "reveal_schedule"]
