"""Inference copies of models built from vqfast `Block`s: what the samplers run.

On CPU the Block Linears become `PackedLinear`s: weights reordered once into oneDNN's
blocked layout, in fp32 or bf16. On an AMD EPYC (AVX-512) oneDNN's packed fp32 GEMM ran
2.3x faster than nn.Linear's (MKL sgemm) and 2.5-7.7x faster for the 1-16 row GEMMs of
cached decoding; on an Intel Xeon, where MKL takes its AVX-512 path, the two run alike and
bf16 weights run on the AMX tiles.
Elsewhere a bf16 request gives `low_precision_copy` (weights cast once) and fp32 the
model itself. Embeddings, positions, LayerNorms and heads are shared with the model, not
copied, and stay fp32; so does the residual stream (see `Block`).

    net = inference_copy(model, torch.bfloat16, batch_hint=B * L)
    logits = net(tokens)     # fp32 logits; fp32 copies equal model(tokens) up to GEMM rounding
"""
from __future__ import annotations

import copy
import weakref

import torch
import torch.nn as nn

from vqfast.models.common.transformer import Block


class PackedLinear(nn.Module):
    """Inference-only Linear on a oneDNN-packed weight (CPU), in the weight's dtype
    (fp32 or bf16; inputs of another dtype, e.g. from an enclosing torch.autocast, are cast
    to it); `batch_hint` is the number of rows the GEMMs will usually have."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype, batch_hint: int):
        super().__init__()
        w = linear.weight.detach().to(dtype)
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(w, batch_hint), persistent=False)
        b = linear.bias
        self.register_buffer("bias", None if b is None else b.detach().to(dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype:  # oneDNN has no mixed-dtype primitive for a packed weight
            x = x.to(self.weight.dtype)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def _shallow_copy(model: nn.Module) -> nn.Module:
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}  # share, do not copy
    return copy.deepcopy(model, memo)


def _block_linears(model: nn.Module):
    """(parent module, attribute name, Linear) of every Linear inside a Block."""
    for blk in (m for m in model.modules() if isinstance(m, Block)):
        for parent in blk.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    yield parent, name, child


def low_precision_copy(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A copy of `model` whose Block Linears hold weights in `dtype` (any device).

    The GEMMs, >99% of the FLOPs, run in `dtype` with weights cast once instead of on every
    call as under torch.autocast; the rest is shared and fp32 (bf16 logits would flip
    near-tied argmaxes). The copy does not follow later updates of `model`.
    """
    if not any(isinstance(m, Block) for m in model.modules()):
        raise TypeError(f"model must contain vqfast Block modules, got {type(model).__name__}")
    out = _shallow_copy(model)
    for _, _, lin in _block_linears(out):
        lin.weight = nn.Parameter(lin.weight.detach().to(dtype), requires_grad=False)
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach().to(dtype), requires_grad=False)
    return out


def packed_copy(model: nn.Module, dtype: torch.dtype = torch.float32, batch_hint: int = 1) -> nn.Module:
    """A copy of a CPU `model` whose Block Linears are `PackedLinear`s in `dtype` (fp32/bf16).
    The packed weights are a second copy of the block weights (memory)."""
    if not any(isinstance(m, Block) for m in model.modules()):
        raise TypeError(f"model must contain vqfast Block modules, got {type(model).__name__}")
    out = _shallow_copy(model)
    for parent, name, lin in list(_block_linears(out)):
        setattr(parent, name, PackedLinear(lin, dtype, batch_hint))
    return out


def can_pack(model: nn.Module, dtype: torch.dtype) -> bool:
    """True when `packed_copy(model, dtype)` can run: CPU parameters, fp32/bf16, oneDNN present
    (bf16 also needs the CPU's bf16 support)."""
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    return dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


_COPIES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


SAMPLING_DTYPES = (None, torch.float32, torch.bfloat16, torch.float16)


def _check_sampling_dtype(dtype) -> None:
    if not any(dtype is d for d in SAMPLING_DTYPES):
        raise TypeError(f"autocast_dtype must be one of {SAMPLING_DTYPES}, got {dtype!r}")


def inference_copy(model: nn.Module, dtype: torch.dtype | None = None, batch_hint: int = 1) -> nn.Module:
    """The model to sample with in `dtype` (None = the model's own dtype, fp32 unless it was cast):
    `packed_copy` where `can_pack`, else `low_precision_copy` for another dtype and `model` itself
    for its own (a bf16 / fp16 model samples in its own dtype only). One copy per model is kept
    and rebuilt only after a parameter (in-place update, new tensor, device move),
    the train/eval mode, `dtype` or `batch_hint` changed."""
    _check_sampling_dtype(dtype)
    own = next(model.parameters()).dtype
    dtype = own if dtype is None else dtype
    if own != torch.float32 and dtype != own:  # the copies recast block Linears only: fp32 models
        raise TypeError(f"a {own} model samples in its own dtype: pass autocast_dtype=None (or {own}), or cast "
                        f"the model with .float() first")
    packed = can_pack(model, dtype)
    if not packed and dtype == own:
        return model
    key = (dtype, batch_hint if packed else None, model.training,
           tuple((id(p), p.data_ptr(), p._version) for p in model.parameters()))
    hit = _COPIES.get(model)
    if hit is None or hit["key"] != key:
        out = packed_copy(model, dtype, batch_hint) if packed else low_precision_copy(model, dtype)
        hit = _COPIES[model] = {"key": key, "model": out}
    return hit["model"]


def low_precision(model, dtype: torch.dtype | None, batch_hint: int = 1):
    """(model to run, dtype left for torch.autocast) for a sampler asked to run in `dtype`:
    `inference_copy` of an nn.Module built from vqfast Blocks, else the model itself
    (under autocast unless dtype is None or fp32)."""
    _check_sampling_dtype(dtype)
    if isinstance(model, nn.Module) and any(isinstance(m, Block) for m in model.modules()):
        return inference_copy(model, dtype, batch_hint), None
    return model, None if dtype in (None, torch.float32) else dtype
