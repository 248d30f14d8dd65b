"""Triton token samplers (semantics in vqfast/reference/sampling.py).

One program per row of V logits, looping over V in blocks: guidance mix, temperature
(IEEE division, div_rn), top-k / top-p thresholds by bisection over the order-preserving
int32 keys of the float32 values (32 passes over the row, which stays in cache), and the
shared categorical draw (vqfast/random.py: integer proposal sums, then ~1.1 walks over
the row per draw), so tokens equal the other backends'. MaskGIT's
reveal is a per-row bisection over the confidences (no sort). Launch with
enable_fp_fusion=False so the float32 arithmetic is the reference's.
"""
import os

import torch
import triton
import triton.language as tl

from vqfast.random import STREAM_CONFIDENCE, gumbel
from vqfast.triton_kernels.random import (cat_accept, cat_block_weight, cat_floor_mul, cat_in_block_weight,
                                          cat_trial_words, exp_f32, log_f32, split_key)

_STREAM_TOKEN = tl.constexpr(1)  # vqfast/random.py (constexpr: jit code reads it)
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


_CAT = 256  # ids per block of the categorical proposal (vqfast/random.py)


def _block(V: int) -> int:
    # The interpreter pays per block operation: one block per row; on GPUs, cache-friendly blocks.
    # At least one proposal block, so tiles hold whole proposal blocks.
    return max(_CAT, min(triton.next_power_of_2(V), 16384 if _INTERPRET else 2048))


@triton.jit
def _key(x):
    """float32 -> int32 with the same order (NaN aside); -0 and +0 share key 0."""
    b = x.to(tl.int32, bitcast=True)
    b = tl.where(b == -2147483648, 0, b)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _load_row(X, U, row, offs, V, scale, temperature, HAS_CFG: tl.constexpr, APPLY_T: tl.constexpr):
    """Row `row` at columns offs as float32 (-inf past V): u + s * (c - u), then / temperature."""
    inside = offs < V
    x = tl.load(X + row * V + offs, mask=inside, other=0.0).to(tl.float32)
    if HAS_CFG:
        u = tl.load(U + row * V + offs, mask=inside, other=0.0).to(tl.float32)
        x = u + scale * (x - u)
    if APPLY_T:
        x = tl.math.div_rn(x, tl.zeros_like(x) + temperature)
    return tl.where(inside, x, float("-inf"))


@triton.jit
def _mass(x, m):
    """Integer top-p mass trunc(exp_f32(x - m) * 2^40) (int64; 0 for x = -inf)."""
    return (exp_f32(x - m) * 1099511627776.0).to(tl.int64)


@triton.jit
def _kept(kx, t_key, need, seen, USE_K: tl.constexpr):
    """Top-k membership of a block given the k-th largest key, ties counted in id order."""
    if USE_K:
        eq = kx == t_key
        rank = seen + tl.cumsum(eq.to(tl.int32), 0) - 1
        return (kx > t_key) | (eq & (rank < need)), seen + tl.sum(eq.to(tl.int32), 0)
    else:
        return kx > -2147483648, seen


@triton.jit
def _tile(X, U, BAN, row, offs, V, scale, temperature, t_key, need, seen, p_key, p_need, seen_p,
          HAS_CFG: tl.constexpr, APPLY_T: tl.constexpr, HAS_BAN: tl.constexpr, USE_K: tl.constexpr,
          USE_P: tl.constexpr):
    """Columns offs of the row with banned ids, top-k and top-p filters applied (-inf = dropped);
    seen / seen_p count the ties at the thresholds met so far (ties join in id order)."""
    x = _load_row(X, U, row, offs, V, scale, temperature, HAS_CFG, APPLY_T)
    if HAS_BAN:
        x = tl.where(tl.load(BAN + offs, mask=offs < V, other=0) != 0, float("-inf"), x)
    kx = _key(x)
    keep, seen = _kept(kx, t_key, need, seen, USE_K)
    if USE_P:
        eq = keep & (kx == p_key)
        rank = seen_p + tl.cumsum(eq.to(tl.int32), 0) - 1
        seen_p += tl.sum(eq.to(tl.int32), 0)
        keep = keep & ((kx > p_key) | (eq & (rank < p_need)))
    return tl.where(keep, x, float("-inf")), seen, seen_p


@triton.jit
def _proposal(x, m, NB: tl.constexpr):
    """A tile [NB * 256] of a row of max m -> in-block weights [NB, 256], sums s [NB], weights s_hat [NB]."""
    x2 = tl.reshape(x, (NB, 256))
    mb = tl.max(x2, 1)
    mb = tl.where(mb > float("-inf"), mb, m)
    wts = cat_in_block_weight(x2, mb[:, None])
    s = tl.sum(wts.to(tl.int64), 1)  # up to 256 * (2^23 + 1): beyond int32
    return x2, wts, s, cat_block_weight(s, m, mb)


@triton.jit
def _draw(X, U, BAN, row, V, m, key_lo, key_hi, scale, temperature, t_key, need, p_key, p_need,
          HAS_CFG: tl.constexpr, APPLY_T: tl.constexpr, HAS_BAN: tl.constexpr, USE_K: tl.constexpr,
          USE_P: tl.constexpr, BLOCK: tl.constexpr):
    """Categorical draw from softmax of the filtered row (max m): vqfast/random.py, trial by trial."""
    NB: tl.constexpr = BLOCK // 256
    cols = tl.arange(0, BLOCK)
    bidx = tl.arange(0, NB)
    lane = tl.arange(0, 256)
    total = tl.zeros((), tl.int64)
    seen = 0
    seen_p = 0
    for v0 in range(0, V, BLOCK):
        x, seen, seen_p = _tile(X, U, BAN, row, v0 + cols, V, scale, temperature, t_key, need, seen, p_key,
                                p_need, seen_p, HAS_CFG, APPLY_T, HAS_BAN, USE_K, USE_P)
        x2, wts, s, s_hat = _proposal(x, m, NB)
        total += tl.sum(s_hat, 0)
    tok = tl.zeros((), tl.int64)
    done = tl.zeros((), tl.int32)
    trial = tl.zeros((), tl.int64)
    while done == 0:
        w0, w1, w2, w3 = cat_trial_words(key_lo, key_hi, _STREAM_TOKEN, row, trial)
        thr = cat_floor_mul(total, w0)
        acc = tl.zeros((), tl.int64)
        found = tl.zeros((), tl.int32)
        ok = tl.zeros((), tl.int1)
        k = tl.zeros((), tl.int64)
        seen = 0
        seen_p = 0
        for v0 in range(0, V, BLOCK):
            x, seen, seen_p = _tile(X, U, BAN, row, v0 + cols, V, scale, temperature, t_key, need, seen, p_key,
                                    p_need, seen_p, HAS_CFG, APPLY_T, HAS_BAN, USE_K, USE_P)
            x2, wts, s, s_hat = _proposal(x, m, NB)
            hit = (tl.cumsum(s_hat, 0) + acc > thr) & (found == 0)
            idx = tl.min(tl.where(hit, bidx, NB), 0)
            sel = bidx == idx
            s_b = tl.sum(tl.where(sel, s, 0), 0)
            s_hat_b = tl.sum(tl.where(sel, s_hat, 0), 0)
            w_row = tl.sum(tl.where(sel[:, None], wts, 0), 0)
            x_row = tl.max(tl.where(sel[:, None], x2, float("-inf")), 0)
            k_in = tl.sum((tl.cumsum(w_row.to(tl.int64), 0) <= cat_floor_mul(s_b, w1)).to(tl.int32), 0)
            at = lane == k_in
            wk = tl.sum(tl.where(at, w_row, 0), 0)
            xk = tl.max(tl.where(at, x_row, float("-inf")), 0)
            new = idx < NB
            ok = tl.where(new, cat_accept(w2, xk, m, wk, s_b, s_hat_b), ok)
            k = tl.where(new, (v0 + idx * 256 + k_in).to(tl.int64), k)
            found = found | new.to(tl.int32)
            acc += tl.sum(s_hat, 0)
        last = trial == 63
        tok = k
        done = (ok | last).to(tl.int32)
        trial += 1
    return tok


@triton.jit
def _sample_rows_kernel(X, U, ROWS, OUT, V, key_lo, key_hi, scale, temperature, top_k, TOP_P,
                        HAS_CFG: tl.constexpr, APPLY_T: tl.constexpr, GREEDY: tl.constexpr,
                        USE_K: tl.constexpr, USE_P: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.load(ROWS + tl.program_id(0))
    cols = tl.arange(0, BLOCK)
    # pass 1: max and bad-row flags
    m = float("-inf")
    bad = 0
    for v0 in range(0, V, BLOCK):
        x = _load_row(X, U, row, v0 + cols, V, scale, temperature, HAS_CFG, APPLY_T)
        m = tl.maximum(m, tl.max(x, 0))
        bad = bad | tl.max(((x != x) | (x == float("inf"))).to(tl.int32), 0)
    bad = bad | (m == float("-inf")).to(tl.int32)
    # top-k: largest key T with count(key >= T) >= k (bisection on int64 to avoid overflow)
    t_key = -2147483648
    need = 0
    if USE_K:
        lo = tl.full((), -2147483648, tl.int64)
        hi = tl.full((), 2147483647, tl.int64)
        for _ in range(32):
            mid = lo + (hi - lo + 1) // 2
            cnt = 0
            for v0 in range(0, V, BLOCK):
                x = _load_row(X, U, row, v0 + cols, V, scale, temperature, HAS_CFG, APPLY_T)
                cnt += tl.sum((_key(x).to(tl.int64) >= mid).to(tl.int32), 0)
            big = cnt >= top_k
            lo = tl.where(big, mid, lo)
            hi = tl.where(big, hi, mid - 1)
        t_key = lo.to(tl.int32)
        above = 0
        for v0 in range(0, V, BLOCK):
            x = _load_row(X, U, row, v0 + cols, V, scale, temperature, HAS_CFG, APPLY_T)
            above += tl.sum((_key(x) > t_key).to(tl.int32), 0)
        need = top_k - above
    # top-p (reference `_nucleus`): integer masses q = trunc(exp_f32(x - m) 2^40) of the kept ids,
    # goal = top_p * float64(Z); P = the largest key with float64(mass(kept, key >= P)) >= goal
    p_key = -2147483648
    p_need = 0
    if USE_P:
        z = tl.zeros((), tl.int64)
        seen = 0
        for v0 in range(0, V, BLOCK):
            x = _load_row(X, U, row, v0 + cols, V, scale, temperature, HAS_CFG, APPLY_T)
            keep, seen = _kept(_key(x), t_key, need, seen, USE_K)
            z += tl.sum(tl.where(keep, _mass(x, m), 0), 0)
        goal = tl.load(TOP_P) * z.to(tl.float64)
        lo = tl.full((), -2147483648, tl.int64)
        hi = tl.full((), 2147483647, tl.int64)
        for _ in range(32):
            mid = lo + (hi - lo + 1) // 2
            mass = tl.zeros((), tl.int64)
            seen = 0
            for v0 in range(0, V, BLOCK):
                x = _load_row(X, U, row, v0 + cols, V, scale, temperature, HAS_CFG, APPLY_T)
                kx = _key(x)
                keep, seen = _kept(kx, t_key, need, seen, USE_K)
                mass += tl.sum(tl.where(keep & (kx.to(tl.int64) >= mid), _mass(x, m), 0), 0)
            big = mass.to(tl.float64) >= goal
            lo = tl.where(big, mid, lo)
            hi = tl.where(big, hi, mid - 1)
        p_key = lo.to(tl.int32)
        # the j-th tie at p_key joins while float64(mass(key > P) + j q) < goal
        mass_gt = tl.zeros((), tl.int64)
        q_t = tl.zeros((), tl.int64)
        n_t = 0
        seen = 0
        for v0 in range(0, V, BLOCK):
            x = _load_row(X, U, row, v0 + cols, V, scale, temperature, HAS_CFG, APPLY_T)
            kx = _key(x)
            keep, seen = _kept(kx, t_key, need, seen, USE_K)
            q = _mass(x, m)
            tie = keep & (kx == p_key)
            mass_gt += tl.sum(tl.where(keep & (kx > p_key), q, 0), 0)
            q_t = tl.maximum(q_t, tl.max(tl.where(tie, q, 0), 0))
            n_t += tl.sum(tie.to(tl.int32), 0)
        j_lo = tl.zeros((), tl.int64)  # the first j in [0, n_t] whose mass before reaches goal
        j_hi = n_t.to(tl.int64)
        for _ in range(24):  # n_t < 2^23
            j_mid = (j_lo + j_hi) // 2
            open_ = j_lo < j_hi
            reach = (mass_gt + j_mid * q_t).to(tl.float64) >= goal
            j_lo = tl.where(open_ & ~reach, j_mid + 1, j_lo)
            j_hi = tl.where(open_ & reach, j_mid, j_hi)
        p_need = j_lo.to(tl.int32)
    if GREEDY:
        best = float("-inf")
        best_i = 0
        for v0 in range(0, V, BLOCK):
            offs = v0 + cols
            x = _load_row(X, U, row, offs, V, scale, temperature, HAS_CFG, APPLY_T)
            cmax = tl.max(x, 0)
            cidx = tl.min(tl.where(x == cmax, offs, 2147483647), 0)
            take = cmax > best
            best_i = tl.where(take, cidx, best_i)
            best = tl.where(take, cmax, best)
        tok = best_i.to(tl.int64)
    else:
        tok = tl.zeros((), tl.int64)
        if bad == 0:
            tok = _draw(X, U, X, row.to(tl.int64), V, m, key_lo, key_hi, scale, temperature, t_key, need, p_key,
                        p_need, HAS_CFG, APPLY_T, False, USE_K, USE_P, BLOCK)
    tl.store(OUT + tl.program_id(0), tl.where(bad != 0, -1, tok))


def _sample_rows(logits, uncond, rows, scale, temperature, top_k, top_p, key, greedy=False):
    """Tokens of logits[rows] ([N, V] contiguous; rows int64 [n]) -> [n] int64, -1 on bad rows."""
    V = logits.shape[1]
    out = torch.empty(rows.shape[0], dtype=torch.long, device=logits.device)
    if rows.shape[0] == 0:
        return out
    lo, hi = split_key(key % (1 << 64))
    p = torch.tensor([float(top_p)], dtype=torch.float64, device=logits.device)  # a float64 top_p (not fp32)
    _sample_rows_kernel[(rows.shape[0],)](
        logits, uncond if uncond is not None else logits, rows, out, V, lo, hi, float(scale), float(temperature),
        int(top_k), p, HAS_CFG=uncond is not None, APPLY_T=(not greedy and temperature != 1.0),
        GREEDY=greedy, USE_K=0 < top_k < V, USE_P=top_p < 1.0, BLOCK=_block(V), enable_fp_fusion=False)
    return out


def sample_logits_triton(logits, uncond, cfg_scale, temperature, top_k, top_p, key):
    """logits [N, V] contiguous (uncond [N, V] or None) -> tokens [N] int64, -1 on bad rows."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    greedy = temperature == 0
    return _sample_rows(logits, uncond, rows, cfg_scale, 1.0 if greedy else temperature,
                        0 if greedy else top_k, 1.0 if greedy else top_p, key, greedy=greedy)


@triton.jit
def _row_lse_kernel(X, SKIP, BAN, TOK, M, NORM, V, key_lo, key_hi, temperature, SAMPLE: tl.constexpr,
                    APPLY_T: tl.constexpr, HAS_BAN: tl.constexpr, BLOCK: tl.constexpr):
    """Per position: token (argmax or categorical draw), row max m and log-normaliser L
    (vqfast/reference/sampling.py `log_normalizer`: int64 sum of trunc(exp_f32(x - m) 2^40),
    exact in any order); -1 / NaN on bad rows. Positions with SKIP set are not read; ids with
    BAN[v] != 0 count as -inf."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    n = tl.where(tl.load(SKIP + row) != 0, 0, V)
    m = float("-inf")
    bad = 0
    best = float("-inf")
    best_i = 0
    for v0 in range(0, n, BLOCK):
        offs = v0 + cols
        x = _load_row(X, X, row, offs, V, 1.0, temperature, False, APPLY_T)
        if HAS_BAN:
            x = tl.where(tl.load(BAN + offs, mask=offs < V, other=0) != 0, float("-inf"), x)
        bad = bad | tl.max(((x != x) | (x == float("inf"))).to(tl.int32), 0)
        m = tl.maximum(m, tl.max(x, 0))
        cmax = tl.max(x, 0)
        cidx = tl.min(tl.where(x == cmax, offs, 2147483647), 0)
        take = cmax > best
        best_i = tl.where(take, cidx, best_i)
        best = tl.where(take, cmax, best)
    bad = bad | (m == float("-inf")).to(tl.int32)
    tok = best_i.to(tl.int64)
    terms = tl.zeros((), tl.int64)
    if bad == 0:
        for v0 in range(0, n, BLOCK):
            offs = v0 + cols
            x = _load_row(X, X, row, offs, V, 1.0, temperature, False, APPLY_T)
            if HAS_BAN:
                x = tl.where(tl.load(BAN + offs, mask=offs < V, other=0) != 0, float("-inf"), x)
            terms += tl.sum((exp_f32(x - m) * 1099511627776.0).to(tl.int64), 0)  # 2^40; -inf adds 0
        if SAMPLE:
            tok = _draw(X, X, BAN, row, V, m, key_lo, key_hi, 1.0, temperature, 0, 0, 0, 0, False, APPLY_T, HAS_BAN,
                        False, False, BLOCK)
    norm = log_f32(tl.where(bad != 0, 1, terms).to(tl.float32) * 9.094947017729282e-13)  # 2^-40
    tl.store(TOK + row, tl.where(bad != 0, -1, tok))
    tl.store(M + row, m)
    tl.store(NORM + row, tl.where(bad != 0, float("nan"), norm))


@triton.jit
def _reveal_kernel(CONF, MASKED, NREV, REVEAL, L, BLOCK_L: tl.constexpr):
    """Row b: reveal the n largest confidences among masked positions, ties to lower positions,
    by bisection over the int32 keys of the confidences (no sort)."""
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK_L)
    inside = offs < L
    mk = tl.load(MASKED + b * L + offs, mask=inside, other=0) != 0
    c = tl.load(CONF + b * L + offs, mask=inside, other=float("-inf"))
    kx = _key(c).to(tl.int64)
    n = tl.load(NREV + b)
    lo = tl.full((), -2147483648, tl.int64)
    hi = tl.full((), 2147483647, tl.int64)
    for _ in range(32):
        mid = lo + (hi - lo + 1) // 2
        big = tl.sum((mk & (kx >= mid)).to(tl.int32), 0) >= n
        lo = tl.where(big, mid, lo)
        hi = tl.where(big, hi, mid - 1)
    above = mk & (kx > lo)
    eq = mk & (kx == lo)
    rank = tl.cumsum(eq.to(tl.int32), 0) - 1
    need = n - tl.sum(above.to(tl.int32), 0)
    rev = (above | (eq & (rank < need))) & (n > 0)
    tl.store(REVEAL + b * L + offs, rev.to(tl.int8), mask=inside)


def gumbel_topk_select_triton(logits, masked, n_reveal, temperature, sample, banned, key):
    """logits [B, L, V] contiguous -> tokens [B, L] (-1 on bad rows), confidence [B, L], reveal [B, L]."""
    B, L, V = logits.shape
    dev = logits.device
    ban = torch.zeros(V, dtype=torch.int8, device=dev).index_fill_(0, banned, 1) if banned.numel() else None
    tok = torch.empty(B * L, dtype=torch.long, device=dev)
    m = torch.empty(B * L, dtype=torch.float32, device=dev)
    norm = torch.empty(B * L, dtype=torch.float32, device=dev)
    reveal = torch.zeros(B, L, dtype=torch.int8, device=dev)
    if B * L == 0:
        return tok.view(B, L), norm.view(B, L), reveal.bool()
    lo, hi = split_key(key % (1 << 64))
    skip = torch.zeros(B * L, dtype=torch.int8, device=dev)
    _row_lse_kernel[(B * L,)](logits, skip, ban if ban is not None else skip, tok, m, norm, V, lo, hi, 1.0,
                              SAMPLE=bool(sample), APPLY_T=False, HAS_BAN=ban is not None, BLOCK=_block(V),
                              enable_fp_fusion=False)
    # the confidence noise is B*L values: vqfast.random's PyTorch Philox, no kernel needed
    g = gumbel(key % (1 << 64), STREAM_CONFIDENCE, torch.arange(B * L, device=dev))
    x_tok = logits.reshape(B * L, V).gather(1, tok.clamp_min(0)[:, None]).squeeze(1).float()
    conf = (((x_tok - m) - norm) + torch.tensor(temperature, dtype=torch.float32, device=dev) * g).view(B, L)
    conf = conf.masked_fill(~masked, float("-inf"))
    tok = tok.view(B, L)
    rows_ok = ~(tok < 0).any(1)
    _reveal_kernel[(B,)](conf, masked.to(torch.int8), torch.where(rows_ok, n_reveal, 0), reveal, L,
                         BLOCK_L=triton.next_power_of_2(L))
    return tok, conf.masked_fill(tok < 0, float("nan")), reveal.bool()


def select_and_sample_topk_triton(logits, known, top_k, n_positions, temperature, key):
    """logits [B, L, V] contiguous -> positions [B, n], tokens [B, n] (-1 past the unknown count), bad [B]."""
    B, L, V = logits.shape
    dev = logits.device
    tok = torch.empty(B * L, dtype=torch.long, device=dev)
    m = torch.empty(B * L, dtype=torch.float32, device=dev)
    norm = torch.empty(B * L, dtype=torch.float32, device=dev)
    if B * L == 0:
        empty = torch.full((B, n_positions), -1, dtype=torch.long, device=dev)
        return empty, empty.clone(), torch.zeros(B, dtype=torch.bool, device=dev)
    lo, hi = split_key(key % (1 << 64))
    skip = known.to(torch.int8)
    _row_lse_kernel[(B * L,)](logits, skip, skip, tok, m, norm, V, lo, hi, float(temperature), SAMPLE=False,
                              APPLY_T=temperature != 1.0, HAS_BAN=False, BLOCK=_block(V), enable_fp_fusion=False)
    score = (-norm).view(B, L).masked_fill(known, float("-inf"))  # max_v log softmax = (m - m) - L
    bad = ((tok.view(B, L) < 0) & ~known).any(1)
    # B x L scores only: a stable sort gives the (score desc, position asc) order
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :n_positions]
    if order.shape[1] < n_positions:
        order = torch.cat([order, order.new_zeros(B, n_positions - order.shape[1])], 1)
    valid = (torch.arange(n_positions, device=dev)[None, :] < (~known).sum(1, keepdim=True)) & ~bad[:, None]
    rows = (torch.arange(B, device=dev)[:, None] * L + order)[valid]
    drawn = _sample_rows(logits.reshape(B * L, V), None, rows, 1.0, temperature, top_k, 1.0, key)
    tokens = torch.full((B, n_positions), -1, dtype=torch.long, device=dev)
    tokens[valid] = drawn
    return order.masked_fill(~valid, -1), tokens, bad
