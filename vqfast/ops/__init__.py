"""Public functional ops: each validates its arguments, picks a backend and runs it."""
from vqfast.ops.diffusion import posterior_logprobs, posterior_sample, vlb_kl
from vqfast.ops.dual_codebook import DualCodebookOutput, dual_codebook_quantize
from vqfast.ops.ema import ema_statistics, ema_update_
from vqfast.ops.nearest_code import QuantizeOutput, nearest_code, quantize
from vqfast.ops.quantize_statistics import (CodeStatistics, QuantizeStatistics, nearest_code_with_statistics,
                                            quantize_with_statistics)
from vqfast.ops.residual import ResidualQuantizeOutput, residual_quantize
from vqfast.ops.sampling import GumbelTopkSelection, gumbel_topk_select, sample_logits, select_and_sample_topk

__all__ = ["DualCodebookOutput", "QuantizeOutput", "ResidualQuantizeOutput", "dual_codebook_quantize",
           "ema_statistics", "ema_update_", "nearest_code", "quantize", "residual_quantize",
           "GumbelTopkSelection", "gumbel_topk_select", "sample_logits", "select_and_sample_topk",
           "CodeStatistics", "QuantizeStatistics", "nearest_code_with_statistics", "quantize_with_statistics",
           "posterior_logprobs", "posterior_sample", "vlb_kl"]
