"""Randomness in vqfast: one convention for every sampler, data function and op.

Arguments: every random function takes `generator`: a `torch.Generator` (used and
advanced), an int seed (same seed + same arguments -> same output on every machine), or
None (torch's global generator). `as_generator` turns that into a torch.Generator,
`philox_key` into the 64-bit key of the counter-based noise the kernels draw, and
`step_key(key, step)` derives the independent key of step `step` of an iterative
sampler (so step i of a run draws the same numbers whatever ran before it).

Counter-based noise (Philox4x32-10): `philox4x32`, `words`, `uniform` and `gumbel` below
in PyTorch; csrc/include/vqfast/philox.h and triton_kernels/random.py are bit-exact with them:

- key: 64 bits per op call, from `philox_key(generator, seed)`:
  an int seed -> key = seed mod 2^64 (no generator state is touched);
  else one `torch.randint(0, 2**32, (2,))` draw from `generator` (or torch's default
  generator when None) -> key = lo | hi << 32. So `torch.manual_seed(s)` or a
  `torch.Generator().manual_seed(s)` makes a call reproducible, and successive calls
  with one generator get fresh keys.
- stream: a 32-bit id naming the use of the noise inside an op (the constants below),
  so two noises of one call never share numbers.
- element index: the flat row-major index of the noise element within its stream
  (e.g. (b * L + l) * V + v for per-vocabulary noise).
  Element i is word (i & 3) of philox(counter=(i>>2 lo32, i>>2 hi32, stream, 0), key).
- uniform(w) = (2*(w >> 9) + 1) * 2^-24 as float32, in [2^-24, 1 - 2^-24], exact;
  gumbel(w) = -log(-log(uniform(w))) with log = the shared float32 `log_f32`.

Categorical draws (the oracle `vqfast.reference.random.categorical`, C++ `vqfast::cat`, Triton
`triton_kernels/random.py`): one draw from softmax(x) over a row x[0..V) (float32, -inf =
excluded) by rejection sampling from an integer proposal, so no per-element noise or log:
- blocks b of 256 ids; mb = block max, m = row max, C = float32(log2(e) * 2^23);
- in-block weight of id k: what_k = trunc(float with bits t + (150 << 23)) + 1, t =
  trunc(max((x_k - mb) * C, -30 * 2^23)) (0 for x_k = -inf). Those bits are the float
  2^23 * 2^e * (1 + f) with e + f = t / 2^23, and 1 + f >= 2^f, so what_k >= 2^23 e^(x_k - mb)
  up to rounding; s_b = sum of what_k over the block (exact integers);
- block weight: (m - mb) * C = sh * 2^23 + phi (trunc, sh clamped to 38),
  s_hat_b = ceil(s_b * (2^24 - phi) / 2^(24 + sh)) >= s_b * 2^-((m - mb) log2 e), since
  1 - phi / 2^24 >= 2^(-phi / 2^23);
- trial j of row r uses the 4 words of Philox block (r << 6) + j of the op's stream:
  block b = first with prefix_sum(s_hat)_b > floor(sum(s_hat) * w0 / 2^32), id k = first in b
  with in-block prefix_sum(what)_k > floor(s_b * w1 / 2^32); accept when, in float32,
  ((uniform(w2) * M) * s_hat_b) * what_k < (exp_f32(x_k - m) * 2^23) * s_b, M = 1 + 2^-12
  (exp_f32 = the shared Cephes expf); trial 63 accepts.
The proposal picks k with probability q_k = s_hat_b what_k / (s_b S), and
e^(x_k - m) <= M s_hat_b what_k / (2^23 s_b) (the rounding of every step is below 2^-16), so
the accepted k follows softmax(x) exactly up to the float32 evaluation of e^(x_k - m) and
32-bit uniforms; acceptance is >= 1 / 1.0615^2 ~ 0.89 per trial. All sums are integers, so
every backend draws the same k in any summation order.
"""
from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1

# Stream ids (one per noise use; the kernels use the same numbers).
STREAM_TOKEN = 1  # categorical draws: row r uses Philox blocks (r << 6) + trial
STREAM_CONFIDENCE = 2  # per-position Gumbel noise of MaskGIT's confidence
STREAM_DIFFUSION = 16  # first id reserved for discrete diffusion (16..31):
STREAM_POSTERIOR = STREAM_DIFFUSION + 0  # posterior_sample: blocks (n << 8) + 3 trial + j
STREAM_Q_KEEP = STREAM_DIFFUSION + 1  # q_sample: uniform per position deciding keep vs resample / mask
STREAM_Q_TOKEN = STREAM_DIFFUSION + 2  # q_sample: word per position picking the uniform replacement token


def as_generator(generator: torch.Generator | int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A torch.Generator from a generator, an int seed, or None (None: global RNG)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    if not -(1 << 63) <= generator < (1 << 64):
        raise ValueError(f"an int generator seed must lie in [-2**63, 2**64), got {generator}")
    return torch.Generator(device=device).manual_seed(generator)


def philox_key(generator: torch.Generator | int | None = None, seed: int | None = None) -> int:
    """64-bit Philox key (a Python int in [0, 2^64)) for one call.

    An int `generator` (or `seed`) is the key itself mod 2^64; a torch.Generator (or None:
    the global one) gives one draw of two 32-bit words.
    """
    if isinstance(generator, int) and not isinstance(generator, bool):
        if seed is not None:
            raise ValueError("pass either generator or seed, not both")
        generator, seed = None, generator
    if seed is not None:
        if generator is not None:
            raise ValueError("pass either generator or seed, not both")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        return seed & _MASK64
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    device = generator.device if generator is not None else "cpu"
    lo, hi = torch.randint(0, 1 << 32, (2,), generator=generator, dtype=torch.int64, device=device).tolist()
    return lo | (hi << 32)


def key_as_int64(key: int) -> int:
    """The key's bit pattern as a signed int64 (how C++ and Triton kernels receive it)."""
    return key - (1 << 64) if key >= (1 << 63) else key


def step_key(key: int, step: int) -> int:
    """Key of step `step` of an iterative sampler: splitmix64 of key + (step + 1) * golden ratio."""
    z = (key + (step + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


# ---------------------------------------------------------------- Philox noise in PyTorch
# Bit-exact with csrc/include/vqfast/philox.h and triton_kernels/random.py. Words are held in
# int64 tensors (values 0 .. 2^32-1); products are split in 16-bit halves so no int64
# intermediate overflows.

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
