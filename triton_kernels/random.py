"""vqfast's counter-based noise in Triton, bit-exact with csrc/include/vqfast/philox.h and
vqfast/reference/random.py (scheme documented in vqfast/random.py).

Kernels receive the 64-bit key as two int32 bit patterns (`split_key`) and must be
launched with enable_fp_fusion=False so `log_f32` is not contracted into FMAs.
"""
import triton
import triton.language as tl

_M0 = tl.constexpr(0xD2511F53)
_M1 = tl.constexpr(0xCD9E8D57)
_W0 = tl.constexpr(0x9E3779B9)
_W1 = tl.constexpr(0xBB67AE85)


def split_key(key: int) -> tuple[int, int]:
    """64-bit key -> (lo, hi) 32-bit words as signed int32 bit patterns (kernel arguments)."""
    lo, hi = key & 0xFFFFFFFF, (key >> 32) & 0xFFFFFFFF
    return (lo - (1 << 32) if lo >= (1 << 31) else lo), (hi - (1 << 32) if hi >= (1 << 31) else hi)


@triton.jit
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of uint32 counters under uint32 key words."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _M0)
        lo0 = c0 * _M0
        hi1 = tl.umulhi(c2, _M1)
        lo1 = c2 * _M1
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = k0 + _W0
        k1 = k1 + _W1
    return c0, c1, c2, c3


@triton.jit
def _key_word(word):
    """A key word (signed int32 bit pattern) as uint32. A word equal to 1 arrives as a constexpr
    (Triton specializes it), so it is added to an int32 zero first (Triton 3.6 has no tl.to_tensor)."""
    return (tl.zeros((), tl.int32) + word).to(tl.uint32, bitcast=True)


@triton.jit
def element_words(key_lo, key_hi, stream, index):
    """uint32 words of elements `index` (int64 tensor, >= 0) of `stream` (int scalar)."""
    k0, k1 = _key_word(key_lo), _key_word(key_hi)
    block = index >> 2
    c0 = (block & 0xFFFFFFFF).to(tl.uint32)
    c1 = (block >> 32).to(tl.uint32)
    c2 = (tl.zeros_like(index) + stream).to(tl.uint32)
    c3 = tl.zeros_like(c0)
    w0, w1, w2, w3 = philox4x32(c0, c1, c2, c3, k0, k1)
    lane = index & 3
    return tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))


@triton.jit
def uniform_from_words(w):
    """uint32 words -> float32 (2*(w>>9)+1) * 2^-24, exactly."""
    return (((w >> 9) << 1) | 1).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def log_f32(x):
    """Natural log of positive normal float32 values: the same float32 operations as vqfast::log_f32."""
    b = x.to(tl.uint32, bitcast=True)
    e = ((b >> 23) & 0xFF).to(tl.int32) - 127
    m = ((b & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > 1.41421356
    m = tl.where(big, m * 0.5, m)
    e = tl.where(big, e + 1, e)
    f = m - 1.0
    z = f * f
    p = tl.zeros_like(f) + 7.0376836292e-2
    p = p * f + -1.1514610310e-1
    p = p * f + 1.1676998740e-1
    p = p * f + -1.2420140846e-1
    p = p * f + 1.4249322787e-1
    p = p * f + -1.6668057665e-1
    p = p * f + 2.0000714765e-1
    p = p * f + -2.4999993993e-1
    p = p * f + 3.3333331174e-1
    fe = e.to(tl.float32)
    y = f * z * p
    y = y + fe * -2.12194440e-4
    y = y + z * -0.5
    r = f + y
    return r + fe * 0.693359375


@triton.jit
def gumbel_from_words(w):
    """uint32 words -> float32 standard Gumbel noise -log(-log(u))."""
    return -log_f32(-log_f32(uniform_from_words(w)))


@triton.jit
def _noise_kernel(OUT, key_lo, key_hi, stream, start, n, KIND: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    w = element_words(key_lo, key_hi, stream, start + offs.to(tl.int64))
    if KIND == 0:
        tl.store(OUT + offs, w.to(tl.int64), mask=offs < n)
    elif KIND == 1:
        tl.store(OUT + offs, uniform_from_words(w), mask=offs < n)
    else:
        tl.store(OUT + offs, gumbel_from_words(w), mask=offs < n)


def noise_triton(key: int, stream: int, start: int, n: int, kind: str, device) -> "torch.Tensor":
    """Elements start..start+n-1 of a stream as "words" (int64), "uniform" or "gumbel" (float32)."""
    import torch

    kind_id = {"words": 0, "uniform": 1, "gumbel": 2}[kind]
    out = torch.empty(n, dtype=torch.int64 if kind_id == 0 else torch.float32, device=device)
    if n == 0:
        return out
    block = 1024
    lo, hi = split_key(key)
    _noise_kernel[(triton.cdiv(n, block),)](out, lo, hi, stream, start, n, KIND=kind_id, BLOCK=block,
                                            enable_fp_fusion=False)
    return out


# ---------------------------------------------------------------- categorical draws
# The proposal / acceptance of vqfast/random.py "Categorical draws", operation for operation.

@triton.jit
def exp_f32(x):
    """e^x, the float32 operations of vqfast::exp_f32 (Cephes expf); 0 below -87."""
    xc = tl.minimum(tl.maximum(x, -87.0), 88.0)
    fx = (xc * 1.44269504088896341 + 12582912.0) - 12582912.0
    r = xc - fx * 0.693359375
    r = r - fx * -2.12194440e-4
    z = r * r
    p = tl.zeros_like(r) + 1.9875691500e-4
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    y = p * z + r + 1.0
    scale = ((fx.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(x < -87.0, 0.0, y * scale)


@triton.jit
def cat_in_block_weight(x, mb):
    """int32 proposal weight of x in a block of finite max mb (0 for x = -inf)."""
    y = tl.maximum((x - mb) * 12102203.0, -251658240.0)
    t = y.to(tl.int32)
    f = (t + (150 << 23)).to(tl.float32, bitcast=True)
    return tl.where(x > float("-inf"), f.to(tl.int32) + 1, 0)


@triton.jit
def cat_block_weight(s, m, mb):
    """int64 weight of blocks with in-block sums s (int64) and maxima mb in a row of max m."""
    e = tl.minimum((m - mb) * 12102203.0, 318767104.0)
    ei = e.to(tl.int64)
    shift = 24 + tl.minimum(ei >> 23, 38)
    one = tl.full(shift.shape, 1, tl.int64)
    return (s * ((1 << 24) - (ei & 0x7FFFFF)) + (one << shift) - 1) >> shift


@triton.jit
def cat_floor_mul(total, w):
    """floor(total * w / 2^32) for int64 total < 2^62 and uint32 words w."""
    lo = (total & 0xFFFFFFFF).to(tl.uint32)
    return (total >> 32) * w.to(tl.int64) + tl.umulhi(lo, w).to(tl.int64)


@triton.jit
def cat_accept(word, x, m, wk, s, s_hat):
    """Acceptance of id x (in-block weight wk, block sums s / s_hat) in a row of max m."""
    lhs = ((uniform_from_words(word) * 1.000244140625) * s_hat.to(tl.float32)) * wk.to(tl.float32)
    rhs = (exp_f32(x - m) * 8388608.0) * s.to(tl.float32)
    return lhs < rhs


@triton.jit
def cat_trial_words(key_lo, key_hi, stream, row, trial):
    """The 4 uint32 words of trial `trial` of row `row` (int64 scalars): Philox block (row << 6) + trial."""
    return block_words(key_lo, key_hi, stream, (row << 6) + trial)


@triton.jit
def block_words(key_lo, key_hi, stream, block):
    """The 4 uint32 words of Philox block `block` (int64) of `stream`."""
    k0, k1 = _key_word(key_lo), _key_word(key_hi)
    c0 = (block & 0xFFFFFFFF).to(tl.uint32)
    c1 = (block >> 32).to(tl.uint32)
    c2 = (tl.zeros_like(block) + stream).to(tl.uint32)
    return philox4x32(c0, c1, c2, tl.zeros_like(c0), k0, k1)
