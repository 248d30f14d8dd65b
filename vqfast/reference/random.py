"""vqfast's counter-based noise in pure PyTorch, bit-exact with csrc/include/vqfast/philox.h
and triton_kernels/random.py.

Philox4x32-10 keyed by a 64-bit call key (see `vqfast.random.philox_key`):
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


# ---------------------------------------------------------------- categorical draws
# One categorical draw per row from softmax(x) with a few words per row instead of one
# Gumbel per element: rejection sampling from a cheap, bit-exact integer proposal
# (layout and proof in vqfast/random.py "Categorical draws"; C++ csrc/include/vqfast/philox.h,
# Triton triton_kernels/random.py repeat every operation).

CAT_BLOCK = 256  # elements per proposal block (index order: block b holds ids b*256 .. b*256+255)
CAT_TRIALS = 64  # trial j of row r uses block (r << 6) + j of the stream (4 words); the last accepts
_C_LOG2E = 12102203.0  # float32(log2(e) * 2^23)
_CLAMP_IN = -30.0 * 2 ** 23  # in-block offsets below 2^-30 all give weight 1
_CLAMP_OUT = 38  # block shifts above 38 octaves are clamped (the bound stays an upper bound)
_ACCEPT_MARGIN = 1.000244140625  # M = 1 + 2^-12 >= every rounding of the envelope


_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def exp_f32(x: torch.Tensor) -> torch.Tensor:
    """e^x for float32 x <= 88 (Cephes expf, the float32 operations of vqfast::exp_f32); 0 below -87."""
    x = x.to(torch.float32)
    xc = x.clamp(-87.0, 88.0)
    fx = (xc * _f32(1.44269504088896341) + _f32(12582912.0)) - _f32(12582912.0)
    r = xc - fx * _f32(0.693359375)
    r = r - fx * _f32(-2.12194440e-4)
    z = r * r
    p = torch.full_like(r, _EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = p * r + _f32(c)
    y = p * z + r + _f32(1.0)
    scale = ((fx.to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(x < -87.0, torch.zeros_like(y), y * scale)


def _floor_mul(total: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """floor(total * w / 2^32) exactly, total int64 in [0, 2^62), w words in [0, 2^32)."""
    hi, lo = total >> 32, total & _MASK32
    lo_hi = (lo >> 16) * w  # < 2^48
    lo_lo = (lo & 0xFFFF) * w  # < 2^48
    return hi * w + ((lo_hi + (lo_lo >> 16)) >> 16)


def block_weight(s: torch.Tensor, m: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
    """s_hat = ceil(s * (2^24 - phi) / 2^(24 + sh)), (m - mb) * C = sh * 2^23 + phi (int64 s, float32 m, mb)."""
    e = ((m - mb) * _f32(_C_LOG2E)).clamp_max(_CLAMP_OUT * 2.0 ** 23).to(torch.int64)
    sh, phi = (e >> 23).clamp_max(_CLAMP_OUT), e & 0x7FFFFF
    shift = 24 + sh
    return (s * ((1 << 24) - phi) + (torch.ones_like(shift) << shift) - 1) >> shift


def proposal_blocks(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x [n, V] float32 (-inf = excluded, max finite) -> the proposal of every row.

    Returns (m [n] row max, mb [n, nb] block max (m for empty blocks), what [n, nb, 256]
    int64 in-block weights, s [n, nb] block sums, s_hat [n, nb] block weights).
    what_k = trunc(2^(23 + t/2^23)-as-float) + 1 with t = trunc(max((x_k - mb) * C, -30 * 2^23)):
    the float bits t + (150 << 23) are 2^23 * 2^e * (1 + f) >= 2^23 * 2^(e + f); s_hat_b =
    `block_weight`: (1 - phi / 2^24) / 2^sh >= 2^-((m - mb) log2 e).
    """
    n, V = x.shape
    nb = -(-V // CAT_BLOCK)
    xb = torch.nn.functional.pad(x, (0, nb * CAT_BLOCK - V), value=float("-inf")).view(n, nb, CAT_BLOCK)
    mb = xb.amax(-1)
    m = mb.amax(-1)
    mb = torch.where(mb > float("-inf"), mb, m[:, None])
    y = ((xb - mb[..., None]) * _f32(_C_LOG2E)).clamp_min(_CLAMP_IN)
    t = y.to(torch.int32)
    what = ((t + (150 << 23)).view(torch.float32).to(torch.int64) + 1) * (xb > float("-inf"))
    s = what.sum(-1)
    return m, mb, what, s, block_weight(s, m[:, None], mb)


def proposal_trial(x: torch.Tensor, m: torch.Tensor, what: torch.Tensor, s: torch.Tensor, s_hat: torch.Tensor,
                   w_block: torch.Tensor, w_id: torch.Tensor, w_accept: torch.Tensor):
    """One trial per row (rows of `proposal_blocks`' outputs, words [n]) -> (id [n], accepted [n] bool)."""
    csum = s_hat.cumsum(-1)
    b = (csum <= _floor_mul(csum[:, -1], w_block)[:, None]).sum(-1).clamp_max(s.shape[1] - 1)
    rows = torch.arange(x.shape[0], device=x.device)
    wb, sb, shb = what[rows, b], s[rows, b], s_hat[rows, b]
    k_in = (wb.cumsum(-1) <= _floor_mul(sb, w_id)[:, None]).sum(-1).clamp_max(CAT_BLOCK - 1)
    k = b * CAT_BLOCK + k_in
    xk = x[rows, k.clamp_max(x.shape[1] - 1)].to(torch.float32)
    lhs = (uniform_from_words(w_accept) * _f32(_ACCEPT_MARGIN)) * shb.to(torch.float32)
    lhs = lhs * wb.gather(-1, k_in[:, None]).squeeze(-1).to(torch.float32)
    rhs = (exp_f32(xk - m) * _f32(2.0 ** 23)) * sb.to(torch.float32)
    return k, lhs < rhs


def categorical(x: torch.Tensor, key: int, stream: int, rows: torch.Tensor) -> torch.Tensor:
    """x [n, V] float32 logits (-inf = excluded), rows [n] int64 row ids naming the noise
    -> [n] int64 draws from softmax(x) (arbitrary ids for rows with NaN/+inf or no finite value)."""
    n, V = x.shape
    if n == 0:
        return rows.new_empty(0)
    x = x.to(torch.float32)
    bad = torch.isnan(x).any(-1) | (x == float("inf")).any(-1) | (x == float("-inf")).all(-1)
    x = torch.where(bad[:, None], torch.zeros_like(x), x)  # callers discard the draws of such rows
    m, _, what, s, s_hat = proposal_blocks(x)
    out = torch.full((n,), -1, dtype=torch.int64, device=x.device)
    todo = torch.arange(n, device=x.device)
    for trial in range(CAT_TRIALS):
        blk = (rows[todo].to(torch.int64) << 6) + trial
        w = philox4x32(blk & _MASK32, blk >> 32, stream & _MASK32, 0, key)
        k, ok = proposal_trial(x[todo], m[todo], what[todo], s[todo], s_hat[todo], w[0], w[1], w[2])
        ok = ok | (trial == CAT_TRIALS - 1)
        out[todo[ok]] = k[ok]
        todo = todo[~ok]
        if todo.numel() == 0:
            break
    return out
