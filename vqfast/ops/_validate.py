"""Argument checks shared by the ops: every message names the argument and what it expects."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
METRICS = ("l2", "cosine")


def tensor(name: str, t, *, dtypes=FLOAT_DTYPES, dim: int | None = None, min_dim: int | None = None) -> None:
    """Type, dtype and rank of one argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dims, got shape {tuple(t.shape)}")
    if min_dim is not None and t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims, got shape {tuple(t.shape)}")


def same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; returns it."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        if dev != first:
            listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
            raise ValueError(f"all tensors must be on one device, got {listing}")
    return first


def metric(m) -> str:
    if m not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {m!r}")
    return m


def codebook(name: str, cb, d: int | None = None) -> None:
    """A [K, d] float codebook with K >= 1 (and the given d)."""
    tensor(name, cb, dim=2)
    if cb.shape[0] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(cb.shape)}, need at least one code")
    if cb.shape[1] < 1:
        raise ValueError(f"{name} has d=0: shape {tuple(cb.shape)}, need d >= 1")
    if d is not None and cb.shape[1] != d:
        raise ValueError(f"x has d={d} but {name} has d={cb.shape[1]}")


def indices(name: str, idx, K: int) -> torch.Tensor:
    """Integer code indices, every one in [0, K) -> idx as int64 (what F.embedding takes).
    The range check reads the values (a device sync), so a compiled graph (and a meta
    tensor, which has none) skips it."""
    tensor(name, idx, dtypes=INDEX_DTYPES)
    if idx.numel() and idx.device.type != "meta" and not torch.compiler.is_compiling():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= K:
            raise ValueError(f"{name} must be in [0, {K}), got values in [{lo}, {hi}]")
    return idx.long()
