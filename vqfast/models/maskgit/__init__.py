"""MaskGIT (Chang et al., CVPR 2022): bidirectional transformer, MVTM training and iterative
decoding / inpainting. Its tokenizer is the shared taming VQGAN, `vqfast.models.common.vqgan.VQGAN`."""
from vqfast.models.maskgit.model import MaskGIT
from vqfast.models.maskgit.sampler import maskgit_decode, reveal_schedule
from vqfast.models.maskgit.transformer import BidirectionalTransformer

__all__ = ["BidirectionalTransformer", "MaskGIT", "maskgit_decode", "reveal_schedule"]
