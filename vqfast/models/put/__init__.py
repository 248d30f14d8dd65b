"""PUT (Liu et al., CVPR 2022): P-VQVAE with a dual codebook, its loss, the UQ-Transformer
and Algorithm 1 (pluralistic inpainting)."""
from vqfast.models.put.losses import PVQVAELoss
from vqfast.models.put.sampler import PUTFill, PUTSample, put_fill, put_sample
from vqfast.models.put.tokenizer import PUTEncoding, PVQVAE
from vqfast.models.put.transformer import UQTrainingBatch, UQTransformer, uq_training_batch

__all__ = ["PUTEncoding", "PUTFill", "PUTSample", "PVQVAE", "PVQVAELoss", "UQTrainingBatch", "UQTransformer",
           "put_fill", "put_sample", "uq_training_batch"]
