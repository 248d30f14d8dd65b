"""Argument checks of the ops, the diffusion functions and the quantizers.

Every check raises TypeError (wrong kind of value) or ValueError (right kind, bad value)
with a message that names the argument and says what was expected. Checks that read a
tensor's values (a device sync) are skipped while torch.compile traces and on meta tensors.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
METRICS = ("l2", "cosine")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _reads_values(t: torch.Tensor) -> bool:
    """Whether a check may read t's values (not while tracing, not on the meta device)."""
    return t.numel() > 0 and t.device.type != "meta" and not torch.compiler.is_compiling()


# ---------------------------------------------------------------- Python scalars

def integer(name: str, v, *, low: int | None = None) -> int:
    """An int (numpy and 0-d tensor integers too, bool not) >= low -> int."""
    if isinstance(v, bool) or (isinstance(v, torch.Tensor) and v.dtype == torch.bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        v = operator.index(v)
    except TypeError:
        got = f"a {_dtype_name(v.dtype)} tensor" if isinstance(v, torch.Tensor) else type(v).__name__
        raise TypeError(f"{name} must be an int, got {got}") from None
    if low is not None and v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    return v


def real(name: str, v, *, low: float | None = None, low_open: bool = False, high: float | None = None,
         high_open: bool = False) -> float:
    """A finite real number (numpy scalars too, bool not) in [low, high] (open ends where asked) -> float."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def one_of(name: str, v, options: Sequence[str]) -> str:
    """One of a fixed set of names."""
    if not isinstance(v, str) or v not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {v!r}")
    return v


def together(**args) -> None:
    """Arguments that are passed together or not at all (None = not passed)."""
    if len({v is None for v in args.values()}) > 1:
        raise ValueError(f"{' and '.join(args)} go together: pass both or neither")


def metric(m) -> str:
    return one_of("metric", m, METRICS)


# ---------------------------------------------------------------- tensors

def tensor(name: str, t, *, dtypes=FLOAT_DTYPES, dim: int | tuple[int, ...] | None = None,
           min_dim: int | None = None) -> None:
    """Type, dtype and rank (one of `dim`, or at least `min_dim`) of one argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(_dtype_name(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {_dtype_name(t.dtype)}")
    if dim is not None and t.dim() not in ((dim,) if isinstance(dim, int) else dim):
        want = dim if isinstance(dim, int) else " or ".join(str(d) for d in dim)
        raise ValueError(f"{name} must have {want} dims, got shape {tuple(t.shape)}")
    if min_dim is not None and t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims, got shape {tuple(t.shape)}")


def shape(name: str, t: torch.Tensor, expected: Sequence[int], what: str) -> None:
    """t.shape == expected; `what` says where the expected shape comes from."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {tuple(t.shape)}")


def nonempty(name: str, t: torch.Tensor, dims: Sequence[int], what: str) -> None:
    """t.shape[i] >= 1 for every i in dims; `what` describes the expected shape."""
    if any(t.shape[i] < 1 for i in dims):
        raise ValueError(f"{name} must be {what}, got shape {tuple(t.shape)}")


def last_dim(name: str, t: torch.Tensor, size: int, what: str) -> None:
    """t.shape[-1] == size; `what` names the last dim's entries (e.g. "features per position")."""
    if t.dim() < 1 or t.shape[-1] != size:
        raise ValueError(f"{name} must have {size} {what}, got shape {tuple(t.shape)}")


def same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; returns it."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    for dev in devices.values():
        if dev != first:
            listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
            raise ValueError(f"all tensors must be on one device, got {listing}")
    return first


def contiguous(name: str, t: torch.Tensor, why: str) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous ({why})")


def separate(name: str, t: torch.Tensor, state_name: str, state: torch.Tensor) -> None:
    """t shares no memory with `state`, which is updated in place (skipped while tracing)."""
    if (t.numel() and state.numel() and t.device.type != "meta" and not torch.compiler.is_compiling()
            and t.untyped_storage().data_ptr() == state.untyped_storage().data_ptr()):
        raise ValueError(f"{name} shares memory with {state_name}, which is updated in place: pass a copy")


def codebook(name: str, cb, d: int | None = None) -> None:
    """A [K, d] float codebook with K >= 1 (and the given d)."""
    tensor(name, cb, dim=2)
    if cb.shape[0] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(cb.shape)}, need at least one code")
    if cb.shape[1] < 1:
        raise ValueError(f"{name} has d=0: shape {tuple(cb.shape)}, need d >= 1")
    if d is not None and cb.shape[1] != d:
        raise ValueError(f"x has d={d} but {name} has d={cb.shape[1]}")


def values_below(name: str, t: torch.Tensor, high: int, high_name: str = "") -> None:
    """Every value of an integer tensor in [0, high) (skipped while tracing)."""
    if _reads_values(t):
        lo, hi = (int(v) for v in torch.aminmax(t))
        if lo < 0 or hi >= high:
            bound = f"{high_name}={high}" if high_name else f"{high}"
            raise ValueError(f"{name} must be in [0, {bound}), got values in [{lo}, {hi}]")


def indices(name: str, idx, K: int, *, dtypes=INDEX_DTYPES) -> torch.Tensor:
    """Integer code indices, every one in [0, K) -> idx as int64 (what F.embedding takes)."""
    tensor(name, idx, dtypes=dtypes)
    values_below(name, idx, K, "K")
    return idx.long()


def id_set(name: str, ids, V: int, device: torch.device) -> torch.Tensor:
    """None, an int, a sequence of ints (empty: none) or a 1-D integer tensor of ids in [0, V), not
    all V of them -> sorted unique int64 ids on `device`."""
    if ids is None:
        return torch.empty(0, dtype=torch.long, device=device)
    if isinstance(ids, int) and not isinstance(ids, bool):
        ids = [ids]
    try:
        t = torch.as_tensor(ids, device=device)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is not None and t.numel() == 0 and t.dim() == 1:  # [] or an empty tensor: nothing banned
        return torch.empty(0, dtype=torch.long, device=device)
    if t is None or t.dtype not in INDEX_DTYPES or t.dim() > 1:
        raise TypeError(f"{name} must be an int, a sequence of ints or a 1-D integer tensor, got {ids!r}")
    t = t.reshape(-1).long()
    values_below(name, t, V, "V")
    t = torch.unique(t)
    if t.numel() >= V:
        raise ValueError(f"{name} holds all V={V} vocabulary ids: none would be left")
    return t


def mask(name: str, m, expected: Sequence[int], device: torch.device, what: str) -> torch.Tensor:
    """A bool mask of the given shape on `device` -> contiguous."""
    tensor(name, m, dtypes=(torch.bool,))
    shape(name, m, expected, what)
    if m.device != device:
        raise ValueError(f"all tensors must be on one device, got logits on {device}, {name} on {m.device}")
    return m.contiguous()


def finite_rows(name: str, bad: torch.Tensor, what: str = "rows") -> None:
    """Raise when any entry of `bad` (one per row of `name`) is True: a row with NaN or +inf,
    or with no finite value. Skipped while tracing (a compiled graph returns the kernels' flags:
    -1 tokens, NaN confidences) and on meta tensors (no values)."""
    if not torch.compiler.is_compiling() and bad.device.type != "meta" and bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} has {int(bad.sum())} {what} with NaN or +inf or no finite value "
                         f"(first at {first})")


def counts_within(name: str, n: torch.Tensor, high: torch.Tensor, high_name: str) -> None:
    """0 <= n[b] <= high[b] for every b (skipped while tracing)."""
    if _reads_values(n) and (bool((n < 0).any()) or bool((n > high).any())):
        raise ValueError(f"{name} must satisfy 0 <= {name}[b] <= {high_name}, got {name}="
                         f"{n.tolist()} with {high_name} = {high.tolist()}")


# ---------------------------------------------------------------- diffusion arguments

def schedule(s) -> None:
    if not (hasattr(s, "alpha_bar") and hasattr(s, "alpha") and hasattr(s, "T")):
        raise TypeError(f"schedule must be a CosineSchedule (with .alpha_bar, .alpha, .T), got {type(s).__name__}")


def timesteps(t, batch: int, T: int, device: torch.device, *, lowest: int = 1) -> torch.Tensor:
    """t as int64 [batch] in lowest..T (an int or 0-d tensor is broadcast over the batch)."""
    if isinstance(t, bool):
        raise TypeError("t must be an int or an int64 tensor [B], got bool")
    if isinstance(t, numbers.Integral):  # int or numpy integer
        t = torch.full((batch,), int(t), dtype=torch.long, device=device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be an int or an int64 tensor [B], got {type(t).__name__}")
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"t must be an integer tensor (int64), got dtype {_dtype_name(t.dtype)}")
    if t.dim() == 0:
        t = t.expand(batch)
    shape("t", t, (batch,), "one timestep per batch row")
    if t.device != torch.device(device) and not (t.device.type == torch.device(device).type == "cpu"):
        raise ValueError(f"all tensors must be on one device, got t on {t.device}, the others on {device}")
    if _reads_values(t) and (int(t.min()) < lowest or int(t.max()) > T):
        raise ValueError(f"t must lie in {lowest}..T = {lowest}..{T}, got values in {int(t.min())}..{int(t.max())}")
    return t.to(torch.long)


def tokens(name: str, z, expected: Sequence[int], high: int, high_name: str) -> None:
    """An int64 token tensor of the given shape with values in [0, high)."""
    tensor(name, z, dtypes=(torch.int64,))
    shape(name, z, expected, "log_x0's shape without K")
    values_below(name, z, high, high_name)
