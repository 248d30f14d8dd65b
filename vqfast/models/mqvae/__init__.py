"""MQ-VAE + Stackformer (Huang et al., CVPR 2023): adaptive mask, de-mask, the
Code/Position-Transformer stack and its sampler."""
from vqfast.models.mqvae.sampler import stackformer_sample
from vqfast.models.mqvae.stackformer import Stackformer
from vqfast.models.mqvae.tokenizer import MQVAE, MQVAEConfig

__all__ = ["MQVAE", "MQVAEConfig", "Stackformer", "stackformer_sample"]
