"""RQ-VAE + Contextual RQ-Transformer + Draft-and-Revise (Lee et al., CVPR / NeurIPS 2022)."""
from vqfast.models.rq.sampler import draft_and_revise, random_partition
from vqfast.models.rq.tokenizer import RQVAE
from vqfast.models.rq.transformer import ContextualRQTransformer

__all__ = ["ContextualRQTransformer", "RQVAE", "draft_and_revise", "random_partition"]
