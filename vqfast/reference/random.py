"""vqfast's categorical sampler in pure PyTorch, bit-exact with csrc/include/vqfast/philox.h
and triton_kernels/random.py (layout and proof: vqfast/random.py "Categorical draws").

The Philox words, uniforms and Gumbel noise it reads are `vqfast.random`'s.
"""
from __future__ import annotations

import torch

from vqfast.random import philox4x32, uniform_from_words

_MASK32 = 0xFFFFFFFF


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


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
