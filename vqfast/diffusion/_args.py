"""Argument checks and per-row kernel coefficients shared by the vqfast.diffusion ops.

Checks run in Python before any kernel launch; every message names the argument.
Coefficients are computed in float64 from the schedule and rounded to float32, once per
schedule for every t (a table), so every backend's kernel sees identical numbers (layout in
csrc/include/vqfast/diffusion_math.h).
"""
from __future__ import annotations

import weakref

import torch

from vqfast import _backend
from vqfast.ops import _validate
from vqfast.reference import diffusion as ref
from vqfast.reference.diffusion import TRANSITIONS

KIND = {"uniform": 0, "absorbing": 1}
NUM_COEF = 6
HAS = ("cpu", "triton")  # backends with diffusion kernels besides the reference


def transition(name) -> str:
    if name not in TRANSITIONS:
        raise ValueError(f"transition must be one of {TRANSITIONS}, got {name!r}")
    return name


def schedule(s) -> None:
    if not (hasattr(s, "alpha_bar") and hasattr(s, "alpha") and hasattr(s, "T")):
        raise TypeError(f"schedule must be a CosineSchedule (with .alpha_bar, .alpha, .T), got {type(s).__name__}")


def timesteps(t, batch: int, T: int, device, *, lowest: int = 1) -> torch.Tensor:
    """t as int64 [B] in lowest..T (an int or 0-d tensor is broadcast over the batch)."""
    if isinstance(t, bool):
        raise TypeError("t must be an int or an int64 tensor [B], got bool")
    if isinstance(t, int):
        t = torch.full((batch,), t, dtype=torch.long, device=device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be an int or an int64 tensor [B], got {type(t).__name__}")
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"t must be an integer tensor (int64), got dtype {str(t.dtype).replace('torch.', '')}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape [B] = [{batch}], got {tuple(t.shape)}")
    if t.device != torch.device(device) and not (t.device.type == torch.device(device).type == "cpu"):
        raise ValueError(f"t is on {t.device} but the other tensors are on {device}")
    if t.numel() and (int(t.min()) < lowest or int(t.max()) > T):
        raise ValueError(f"t must lie in {lowest}..T = {lowest}..{T}, got values in {int(t.min())}..{int(t.max())}")
    return t.to(torch.long)


def tokens(name: str, z, shape, high: int, high_name: str) -> None:
    """An int64 tensor of the given shape with values in [0, high)."""
    _validate.tensor(name, z, dtypes=(torch.int64,))
    if tuple(z.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)} (log_x0's shape without K), got {list(z.shape)}")
    if z.numel() and (int(z.min()) < 0 or int(z.max()) >= high):
        raise ValueError(f"{name} must lie in [0, {high_name}) = [0, {high}), "
                         f"got values in {int(z.min())}..{int(z.max())}")


def logits(name: str, x) -> None:
    _validate.tensor(name, x, min_dim=2)
    if x.shape[-1] < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must be [B, ..., K] with B >= 1 and K >= 1, got shape {tuple(x.shape)}")


def resolve(op: str, backend: str, device) -> str:
    return _backend.resolve(op, backend, device, has=HAS)


def _coefficients(sched, t: torch.Tensor, K: int, kind: str) -> torch.Tensor:
    abar = sched.alpha_bar.to(t.device)
    ab, a, abt = abar[t - 1], sched.alpha.to(t.device)[t], abar[t]
    if kind == "uniform":
        cols = [((1 - a) / K).log(), (a + (1 - a) / K).log(), ab.log(), ((1 - ab) / K).log(), ab, (1 - ab) / K]
    else:
        zero = torch.zeros_like(ab)
        keep, mask = (ab - abt) / (1 - abt), (1 - ab) / (1 - abt)
        cols = [keep.log(), mask.log(), keep, zero, zero, zero]
    return torch.stack(cols, dim=1).to(torch.float32)


_TABLES: dict = {}  # key -> (weakref to alpha_bar, weakref to alpha, table)
_MAX_TABLES = 16


def _per_step(fn, sched, t: torch.Tensor, K: int, kind: str) -> torch.Tensor:
    """fn(sched, t, K, kind) as rows t - 1 of a table of fn over every t = 1..T, built once per
    (schedule tensors and their versions, K, kind, device): a sampling or training step then pays
    one index instead of ~15 small float64 ops (~50 us, most of the op's time at small sizes).
    The cache holds weak references: a schedule dropped by its owner is freed (an id reused by a
    new tensor misses, since the dead reference no longer returns that tensor)."""
    ab, a = sched.alpha_bar, sched.alpha
    key = (fn, id(ab), id(a), ab._version, a._version, K, kind, t.device)
    hit = _TABLES.get(key)
    if hit is None or hit[0]() is not ab or hit[1]() is not a:
        _TABLES.pop(key, None)
        if len(_TABLES) >= _MAX_TABLES:
            _TABLES.pop(next(iter(_TABLES)))
        steps = torch.arange(1, ab.numel(), device=t.device)
        hit = _TABLES[key] = (weakref.ref(ab), weakref.ref(a), fn(sched, steps, K, kind).contiguous())
    return hit[2][t - 1]


def coefficients(sched, t: torch.Tensor, K: int, kind: str) -> torch.Tensor:
    """float32 [B, 6] per-row constants of the posterior at timesteps t (see diffusion_math.h)."""
    return _per_step(_coefficients, sched, t, K, kind)


def sample_coefficients(sched, t: torch.Tensor, K: int, kind: str) -> torch.Tensor:
    """float32 [B, 4] = vqfast.reference.diffusion.sample_coefficients, the same numbers (its
    float64 steps are elementwise + - * /, exact whatever the tensor's length)."""
    return _per_step(ref.sample_coefficients, sched, t, K, kind)


def nonfinite_rows(name: str, bad: torch.Tensor) -> None:
    """Raise when some position's row of log-probs had NaN / +inf or no finite entry."""
    if bool(bad.any()):
        first = tuple(int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{name} has a row with NaN or +inf, or with every entry -inf "
                         f"({int(bad.sum())} such positions, first at {first}); diffusion ops need finite "
                         f"logits (-inf allowed for excluded tokens)")
