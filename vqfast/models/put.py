"""PUT (Liu et al., CVPR 2022): P-VQVAE, its loss, the UQ-Transformer and its training step.

The pieces live in put_vqvae.py, put_loss.py and put_transformer.py; the sampler
(Algorithm 1) is `vqfast.samplers.put_sample`.
"""
from vqfast.models.put_loss import PVQVAELoss
from vqfast.models.put_transformer import PRESETS, UQTrainingBatch, UQTransformer, uq_loss, uq_training_batch
from vqfast.models.put_vqvae import PVQVAE, PVQVAEOutput

__all__ = ["PRESETS", "PVQVAE", "PVQVAELoss", "PVQVAEOutput", "UQTrainingBatch", "UQTransformer", "uq_loss",
           "uq_training_batch"]
