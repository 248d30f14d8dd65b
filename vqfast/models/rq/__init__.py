"""RQ-VAE + Contextual RQ-Transformer + Draft-and-Revise (Lee et al., CVPR / NeurIPS 2022)."""
from vqfast.models.rq.sampler import PAPER_SETTINGS, RQSample, Step, draft_and_revise, random_partition
from vqfast.models.rq.tokenizer import RQVAE
from vqfast.models.rq.transformer import ContextualRQTransformer

__all__ = ["ContextualRQTransformer", "PAPER_SETTINGS", "RQSample", "RQVAE", "Step", "draft_and_revise",
           "random_partition"]
