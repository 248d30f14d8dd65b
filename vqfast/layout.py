"""Memory formats of 4-D activations: contiguous NCHW or channels-last NHWC.

A token map permuted or reshaped into [B, C, H, W] (a quantizer's output, an attention
output) carries channels-last strides into a network kept in NCHW, or the reverse; every
layer after it then runs in the other format, and GroupNorm + SiLU (forward and backward) run
1.4-1.6x (fp32) to 1.9-3.8x (bf16) slower channels-last than NCHW on the CPU.
"""
from __future__ import annotations

import torch


def is_channels_last(t: torch.Tensor) -> bool:
    """True when t is 4-D with NHWC strides (and not also plain contiguous, as when H = W = 1)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def same_format(t: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
    """t [B, C, H, W] in like's memory format (like: an activation or a conv weight; None: NCHW).

    Returns t itself when it already is; otherwise one copy."""
    nhwc = like is not None and is_channels_last(like)
    return t.contiguous(memory_format=torch.channels_last if nhwc and t.dim() == 4 else torch.contiguous_format)
