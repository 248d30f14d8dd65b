"""Turning `generator` / `seed` arguments into the 64-bit key of vqfast's counter-based noise.

Every sampling op draws its noise from Philox4x32-10 (csrc/include/vqfast/philox.h,
vqfast/reference/random.py, triton_kernels/random.py, all bit-exact):

- key: 64 bits per op call, from `philox_key(generator, seed)`:
  `seed` given -> key = seed mod 2^64 (no generator state is touched);
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
"""
from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1

# Stream ids (one per noise use; the kernels use the same numbers).
STREAM_TOKEN = 1  # per-(position, vocabulary) Gumbel noise of a categorical draw
STREAM_CONFIDENCE = 2  # per-position Gumbel noise of MaskGIT's confidence
STREAM_DIFFUSION = 16  # first id reserved for vqfast.diffusion (16..31)


def philox_key(generator: torch.Generator | None = None, seed: int | None = None) -> int:
    """64-bit Philox key (a Python int in [0, 2^64)) for one op call; see the module doc."""
    if seed is not None:
        if generator is not None:
            raise ValueError("pass either generator or seed, not both")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        return seed & _MASK64
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    device = generator.device if generator is not None else "cpu"
    lo, hi = torch.randint(0, 1 << 32, (2,), generator=generator, dtype=torch.int64, device=device).tolist()
    return lo | (hi << 32)


def key_as_int64(key: int) -> int:
    """The key's bit pattern as a signed int64 (how C++ and Triton kernels receive it)."""
    return key - (1 << 64) if key >= (1 << 63) else key
