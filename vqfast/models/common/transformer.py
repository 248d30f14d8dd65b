"""Transformer blocks shared by every token model.

Pre-LN blocks (x + Attn(LN(x)), x + MLP(LN(x))) with a GELU MLP and attention through
`torch.nn.functional.scaled_dot_product_attention` (flash-attn's kernel when it is
installed and the tensors are on CUDA in fp16/bf16; on CPU in bf16 at inference, three
bf16 GEMM steps, see `attention`).
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn as nn
import torch.nn.functional as F

_HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


# Scores held at once by the CPU bf16 attention path (elements): 4 MiB in bf16, so a chunk's
# scores stay in the shared L3 cache between the two GEMMs and the softmax.
_SCORE_CHUNK = 1 << 21


# Below this many keys torch's CPU flash-attention backward runs 1.2-10x slower in bf16 than in
# fp32 (16-192 keys, this machine); from 256 keys on, bf16 is as fast or faster.
_CPU_BF16_FLASH_FROM = 256


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, attn_mask: torch.Tensor | None = None,
         dropout: float = 0.0, is_causal: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention, q [B, H, Lq, Dh], k / v [B, H, Lk, Dh] -> [B, H, Lq, Dh].

    A bf16 CPU call (bf16 inputs, or bf16 autocast) that autograd records with fewer than
    _CPU_BF16_FLASH_FROM keys runs in fp32 and returns bf16."""
    bf16 = q.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                         and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    if (q.device.type == "cpu" and bf16 and k.shape[-2] < _CPU_BF16_FLASH_FROM and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad)):
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask,
                                                 dropout_p=dropout, is_causal=is_causal)
        return out.to(torch.bfloat16)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """Non-causal attention, q/k/v [B, H, L, Dh] -> [B, H, L, Dh].

    On CPU in bf16 without autograd, `matmul_attention` (bf16 GEMMs): torch's CPU
    flash-attention kernel runs no faster in bf16 than in fp32 (about 85 GFLOP/s on
    this machine) while bf16 GEMMs run 4.5x faster than fp32 ones.
    """
    if _HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from flash_attn import flash_attn_func  # layout [B, L, H, Dh]
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout)
        return out.transpose(1, 2)
    if (q.device.type == "cpu" and q.dtype == torch.bfloat16 and dropout == 0.0
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))):
        return matmul_attention(q, k, v)
    return sdpa(q, k, v, dropout=dropout)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) v with batched GEMMs, q/k/v [B, H, L, Dh] -> [B, H, L, Dh].

    The [B*H, L, Lk] scores are materialized in chunks of heads (and of query rows when
    one head's L x Lk exceeds the budget), at most _SCORE_CHUNK elements at once, in the
    input dtype; the softmax computes in fp32 internally. In bf16 the scores are rounded
    to 8 bits of mantissa (SDPA keeps them in fp32), so the output error is a few times
    SDPA's bf16 error (tests/models/test_maskgit_lowp.py bounds it).
    """
    B, H, L, Dh = q.shape
    Lk = k.shape[2]
    n = B * H
    qs = (q * Dh ** -0.5).reshape(n, L, Dh)  # scaling q (L*Dh) is cheaper than scaling the scores (L*Lk)
    ks, vs = k.reshape(n, Lk, Dh), v.reshape(n, Lk, Dh)
    out = q.new_empty(n, L, Dh)
    rows = max(1, min(L, _SCORE_CHUNK // Lk))
    step = max(1, _SCORE_CHUNK // (rows * Lk))
    for i in range(0, n, step):
        kt, vi = ks[i:i + step].transpose(1, 2), vs[i:i + step]
        if rows == L:
            torch.bmm(torch.softmax(torch.bmm(qs[i:i + step], kt), -1), vi, out=out[i:i + step])
            continue
        for j in range(0, L, rows):
            out[i:i + step, j:j + rows] = torch.bmm(torch.softmax(torch.bmm(qs[i:i + step, j:j + rows], kt), -1), vi)
    return out.view(B, H, L, Dh)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        for name, v in (("dim", dim), ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


def init_weights(m: nn.Module, truncated: bool = True) -> None:
    """GPT-style init for `model.apply`: Linear and Embedding weights N(0, 0.02) (truncated at
    +-2 by default), Linear biases 0."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        (nn.init.trunc_normal_ if truncated else nn.init.normal_)(m.weight, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


class Block(nn.Module):
    """Pre-LN transformer block.

    The residual stream keeps the dtype of x: with a `low_precision_copy` (bf16 Linear
    weights, fp32 LayerNorms) x stays fp32 and only the LayerNorm outputs are cast to
    the weights' dtype, so rounding errors do not pile up in the stream over the blocks.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be a number > 0, got {mlp_ratio!r}")
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.attn.qkv.weight.dtype
        x = x + self.attn(self.norm1(x).to(dtype))
        return x + self.mlp(self.norm2(x).to(dtype))
