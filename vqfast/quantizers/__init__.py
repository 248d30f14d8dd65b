"""Quantizer modules and codebook learning: EMA (PUT eq. 2), dead-code revival, k-means/AFK-MC2,
ReFiT (VQ-DDM), data-parallel sync."""
from vqfast.quantizers import distributed
from vqfast.quantizers.codebook import Codebook
from vqfast.quantizers.dual import DualCodebookQuantizer
from vqfast.quantizers.clustering import KMeansResult, afkmc2, kmeans, kmeans_plus_plus
from vqfast.quantizers.refit import RefitReport, RefitTokenizer, codebook_usage, refit, sample_features
from vqfast.quantizers.residual import ResidualQuantizer
from vqfast.quantizers.stats import perplexity, usage
from vqfast.quantizers.vector import QuantizerLosses, VectorQuantizer

__all__ = ["Codebook", "DualCodebookQuantizer", "KMeansResult", "QuantizerLosses", "RefitReport", "RefitTokenizer",
           "ResidualQuantizer", "VectorQuantizer", "afkmc2", "codebook_usage", "distributed", "kmeans",
           "kmeans_plus_plus", "perplexity", "refit", "sample_features", "usage"]
