"""MQ-VAE + Stackformer (Huang et al., CVPR 2023): adaptive mask, de-mask, the
Code/Position-Transformer stack and its sampler."""
from vqfast.models.mqvae.sampler import StackformerSample, stackformer_sample
from vqfast.models.mqvae.stackformer import Stackformer
from vqfast.models.mqvae.tokenizer import MQVAE, MQVAEEncoding

__all__ = ["MQVAE", "MQVAEEncoding", "Stackformer", "StackformerSample", "stackformer_sample"]
