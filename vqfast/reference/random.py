"""vqfast's counter-based noise in pure PyTorch, bit-exact with csrc/include/vqfast/philox.h
and triton_kernels/random.py.

Philox4x32-10 keyed by a 64-bit call key (see `vqfast._random.philox_key`):
element i of stream s is word (i & 3) of philox(counter=(i>>2 lo32, i>>2 hi32, s, 0), key).
uniform(w) = (2*(w >> 9) + 1) * 2^-24 (float32, in (0, 1)); gumbel(w) = -log(-log(u))
with `log_f32`, a fixed sequence of float32 operations that every backend repeats.
Words are held in int64 tensors (values 0 .. 2^32-1); products are split in 16-bit
halves so no int64 intermediate overflows.
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_ROUNDS = 10


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi32, lo32) of the 64-bit product a * b, a a 32-bit constant, b words."""
    t1 = a * (b & 0xFFFF)  # < 2^48
    t2 = a * (b >> 16)  # < 2^48
    s = t1 + ((t2 & 0xFFFF) << 16)
    return (t2 >> 16) + (s >> 32), s & _MASK32


def philox4x32(c0, c1, c2, c3, key: int) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of counters (c0..c3, int64 tensors or ints of 32-bit words) under a 64-bit key."""
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    ref = next(c for c in (c0, c1, c2, c3) if isinstance(c, torch.Tensor))
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64, device=ref.device).expand(ref.shape)
                      for c in (c0, c1, c2, c3))
    for _ in range(_ROUNDS):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def words(key: int, stream: int, index: torch.Tensor) -> torch.Tensor:
    """32-bit words (int64 tensor, same shape as index) of elements `index` (int64 >= 0) of a stream."""
    index = index.to(torch.int64)
    block = index >> 2
    out = philox4x32(block & _MASK32, block >> 32, stream & _MASK32, 0, key)
    lane = (index & 3).unsqueeze(-1)
    return torch.stack(out, dim=-1).gather(-1, lane).squeeze(-1)


def uniform_from_words(w: torch.Tensor) -> torch.Tensor:
    """Words -> float32 uniforms (2*(w>>9)+1) * 2^-24, exactly."""
    return ((w >> 9) * 2 + 1).to(torch.float32) * (2.0 ** -24)


_LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
             -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def log_f32(x: torch.Tensor) -> torch.Tensor:
    """Natural log of positive normal float32 values, the same float32 operations as
    vqfast::log_f32 (Cephes logf); within ~1 ulp of torch.log."""
    x = x.to(torch.float32)
    b = x.view(torch.int32).to(torch.int64) & _MASK32
    e = ((b >> 23) & 0xFF) - 127
    m = ((b & 0x007FFFFF) | 0x3F800000).to(torch.int32).view(torch.float32)
    big = m > _f32(1.41421356)
    m = torch.where(big, m * _f32(0.5), m)
    e = torch.where(big, e + 1, e)
    f = m - _f32(1.0)
    z = f * f
    p = torch.full_like(f, _LOG_POLY[0])
    for c in _LOG_POLY[1:]:
        p = p * f + _f32(c)
    fe = e.to(torch.float32)
    y = f * z * p
    y = y + fe * _f32(-2.12194440e-4)
    y = y + z * _f32(-0.5)
    r = f + y
    return r + fe * _f32(0.693359375)


def gumbel_from_words(w: torch.Tensor) -> torch.Tensor:
    """Words -> float32 standard Gumbel noise -log(-log(u))."""
    return -log_f32(-log_f32(uniform_from_words(w)))


def uniform(key: int, stream: int, index: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in (0, 1) for elements `index` of a stream (same shape as index)."""
    return uniform_from_words(words(key, stream, index))


def gumbel(key: int, stream: int, index: torch.Tensor) -> torch.Tensor:
    """float32 standard Gumbel noise for elements `index` of a stream (same shape as index)."""
    return gumbel_from_words(words(key, stream, index))


def gumbel_grid(key: int, stream: int, shape: tuple[int, ...], device=None) -> torch.Tensor:
    """Gumbel noise for a contiguous tensor of `shape`: element index = flat row-major index."""
    n = 1
    for s in shape:
        n *= s
    return gumbel(key, stream, torch.arange(n, device=device)).reshape(shape)


def uniform_grid(key: int, stream: int, shape: tuple[int, ...], device=None) -> torch.Tensor:
    """Uniforms for a contiguous tensor of `shape`: element index = flat row-major index."""
    n = 1
    for s in shape:
        n *= s
    return uniform(key, stream, torch.arange(n, device=device)).reshape(shape)
