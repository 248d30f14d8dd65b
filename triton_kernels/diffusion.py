"""Discrete-diffusion posterior in Triton (VQ-DDM Sec. 3.1, eqs. 16-24).

One program per position walks its K logits in BLOCK chunks: a max pass and a sum-exp
pass give the log-normalizer, then one more pass writes log-probs or accumulates the
VLB sums; the sampler draws from the categorical proposal of triton_kernels/random.py. Same math and coefficient layout as
csrc/include/vqfast/diffusion_math.h (uniform: a0, a1, log ab, lc, ab, (1-ab)/K;
absorbing: log c, log m, c). Noise is vqfast's Philox (bit-exact with the other
backends); launches pass enable_fp_fusion=False as triton_kernels/random.py requires.
"""
import torch
import triton
import triton.language as tl

from vqfast.triton_kernels.random import (block_words, cat_accept, cat_block_weight, cat_floor_mul,
                                          split_key, uniform_from_words)
from vqfast.triton_kernels.sampling import _proposal

_INF = tl.constexpr(float("inf"))  # constexpr: jit code reads it


@triton.jit
def _log1p(e):
    # log(1 + e) for e >= 0 with the rounding of 1 + e corrected
    u = 1.0 + e
    d = u - 1.0
    return tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _logaddexp(a, b):
    hi = tl.maximum(a, b)
    lo = tl.minimum(a, b)
    return tl.where(lo == -_INF, hi, hi + _log1p(tl.exp(lo - hi)))


@triton.jit
def _sigmoid(u):
    e = tl.exp(-tl.abs(u))
    return tl.where(u > 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _softplus(u):
    return tl.maximum(u, 0.0) + _log1p(tl.exp(-tl.abs(u)))


@triton.jit
def _row_lse(X, row, K, BLOCK: tl.constexpr):
    """(max, sum e^{x-max}, ok) of one row; ok = no NaN/+inf and some entry above -inf."""
    offs = tl.arange(0, BLOCK)
    m = -_INF
    bad = 0
    for k0 in range(0, K, BLOCK):
        x = tl.load(X + row + k0 + offs, mask=k0 + offs < K, other=-_INF).to(tl.float32)
        bad += tl.sum(((x != x) | (x == _INF)).to(tl.int32), axis=0)
        m = tl.maximum(m, tl.max(tl.where(x != x, -_INF, x), axis=0))
    ok = (bad == 0) & (m > -_INF)
    mm = tl.where(ok, m, 0.0)
    s = 0.0
    for k0 in range(0, K, BLOCK):
        x = tl.load(X + row + k0 + offs, mask=k0 + offs < K, other=-_INF).to(tl.float32)
        s += tl.sum(tl.exp(x - mm), axis=0)
    return mm, s, ok


@triton.jit
def _uniform_norm(a0, a1, b_zt, rest):
    x = a0 + tl.where(rest > 0, tl.log(tl.maximum(rest, 1e-38)), -_INF)
    return _logaddexp(x, a1 + b_zt)


@triton.jit
def _uniform_row(C, X, row, zt, K, m, s):
    """Row constants of the uniform posterior with x0 = softmax(x): (a0, a1, lab, lc, ab, ck, lse, Z)."""
    a0 = tl.load(C + 0)
    a1 = tl.load(C + 1)
    lab = tl.load(C + 2)
    lc = tl.load(C + 3)
    ab = tl.load(C + 4)
    ck = tl.load(C + 5)
    lse = m + tl.log(s)
    xj = tl.load(X + row + zt).to(tl.float32)
    b_zt = _logaddexp(lab + (xj - lse), lc)
    rest_p = tl.maximum(s - tl.exp(xj - m), 0.0) / s
    z = _uniform_norm(a0, a1, b_zt, ab * rest_p + ck * (K - 1).to(tl.float32))
    return a0, a1, lab, lc, ab, ck, lse, z


@triton.jit
def _logprobs_kernel(X, ZT, C, OUT, LSE, K, KS, L, KIND: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    row = n * K
    c = C + (n // L) * 6
    zt = tl.load(ZT + n)
    m, s, ok = _row_lse(X, row, K, BLOCK)
    offs = tl.arange(0, BLOCK)
    if KIND == 0:
        a0, a1, lab, lc, ab, ck, lse, z = _uniform_row(c, X, row, zt, K, m, s)
    else:
        lse = m + tl.log(s)
    tl.store(LSE + n, tl.where(ok, lse, float("nan")))
    for k0 in range(0, KS, BLOCK):
        k = k0 + offs
        x = tl.load(X + row + k, mask=k < K, other=-_INF).to(tl.float32)
        y = x - lse
        if KIND == 0:
            o = (tl.where(k == zt, a1, a0) + _logaddexp(lab + y, lc)) - z
        else:
            lm = tl.load(c + 1)
            masked = tl.where(k < K, tl.load(c + 0) + y, lm)
            o = tl.where(zt == K, masked, tl.where(k == zt, 0.0, -_INF))
        tl.store(OUT + n * KS + k, tl.where(ok | ((KIND == 1) & (zt < K)), o, float("nan")), mask=k < KS)


@triton.jit
def _logprobs_backward_kernel(GO, X, ZT, C, LSE, OUT, K, KS, L, KIND: tl.constexpr, BLOCK: tl.constexpr):
    # gradient to x of sum_k G_k out_k (math: csrc/cpu/diffusion_logprobs_grad.cpp); entries
    # where out is -inf carry no gradient
    n = tl.program_id(0).to(tl.int64)
    row = n * K
    c = C + (n // L) * 6
    zt = tl.load(ZT + n)
    lse = tl.load(LSE + n)
    offs = tl.arange(0, BLOCK)
    if KIND == 1:
        gs = 0.0
        for k0 in range(0, K, BLOCK):
            k = k0 + offs
            x = tl.load(X + row + k, mask=k < K, other=-_INF).to(tl.float32)
            go = tl.load(GO + n * KS + k, mask=k < K, other=0.0)
            gs += tl.sum(tl.where(x > -_INF, go, 0.0), axis=0)
        for k0 in range(0, K, BLOCK):
            k = k0 + offs
            x = tl.load(X + row + k, mask=k < K, other=-_INF).to(tl.float32)
            go = tl.load(GO + n * KS + k, mask=k < K, other=0.0)
            g = tl.where(x > -_INF, go, 0.0) - tl.exp(x - lse) * gs
            tl.store(OUT + row + k, tl.where(zt < K, 0.0, g).to(OUT.dtype.element_ty), mask=k < K)
    else:
        a0 = tl.load(c + 0)
        a1 = tl.load(c + 1)
        lab = tl.load(c + 2)
        lc = tl.load(c + 3)
        ab = tl.load(c + 4)
        ck = tl.load(c + 5)
        t1 = lc == -_INF  # t = 1: s = 1, out = -inf exactly where x = -inf
        ps = 0.0
        gs = 0.0
        for k0 in range(0, K, BLOCK):
            k = k0 + offs
            x = tl.load(X + row + k, mask=k < K, other=-_INF).to(tl.float32)
            go = tl.load(GO + n * KS + k, mask=k < K, other=0.0)
            ps += tl.sum(tl.where(k == zt, 0.0, tl.exp(x - lse)), axis=0)  # mass outside z_t
            gs += tl.sum(tl.where(x == -_INF, tl.where(t1, 0.0, go), go), axis=0)
        xj = tl.load(X + row + zt).to(tl.float32)
        z = _uniform_norm(a0, a1, _logaddexp(lab + (xj - lse), lc), ab * ps + ck * (K - 1).to(tl.float32))
        e0 = tl.exp(a0 - z)
        e1 = tl.exp(a1 - z)
        sy = 0.0
        for k0 in range(0, K, BLOCK):
            k = k0 + offs
            x = tl.load(X + row + k, mask=k < K, other=-_INF).to(tl.float32)
            go = tl.load(GO + n * KS + k, mask=k < K, other=0.0)
            sy += tl.sum(_logprobs_gy(x, go, k, zt, lse, ab, ck, e0, e1, gs, t1), axis=0)
        for k0 in range(0, K, BLOCK):
            k = k0 + offs
            x = tl.load(X + row + k, mask=k < K, other=-_INF).to(tl.float32)
            go = tl.load(GO + n * KS + k, mask=k < K, other=0.0)
            g = _logprobs_gy(x, go, k, zt, lse, ab, ck, e0, e1, gs, t1) - tl.exp(x - lse) * sy
            tl.store(OUT + row + k, g.to(OUT.dtype.element_ty), mask=k < K)


@triton.jit
def _logprobs_gy(x, go, k, zt, lse, ab, ck, e0, e1, S, t1):
    """g^y_k = s_k (G_k - S pi_k) of the uniform posterior (0 in lanes past K, where x = -inf)."""
    p = tl.exp(x - lse)
    abp = ab * p
    den = abp + ck
    s = tl.where(t1, 1.0, abp / tl.maximum(den, 1.1754943508222875e-38))
    pi = tl.where(k == zt, e1, e0) * den
    gk = tl.where(x == -_INF, tl.where(t1, 0.0, go), go)
    return s * (gk - S * pi)


@triton.jit
def _walk(X, row, K, m, total, w_block, w_id, ex_block, ex_lane, ex_s, ex_sh, BLOCK: tl.constexpr):
    """One trial of the categorical proposal of row X[row : row + K] (max m), with the weight of
    lane ex_lane of block ex_block set to 0 (ex_block = -1: none; that block's sums ex_s / ex_sh,
    the row total `total`) -> (id, its logit, its in-block weight, its block's s and s_hat)."""
    NB: tl.constexpr = BLOCK // 256
    cols = tl.arange(0, BLOCK)
    bidx = tl.arange(0, NB)
    lane = tl.arange(0, 256)
    thr = cat_floor_mul(total, w_block)
    acc = tl.zeros((), tl.int64)
    found = tl.zeros((), tl.int32)
    k = tl.zeros((), tl.int64)
    xk = tl.zeros((), tl.float32)
    wk = tl.zeros((), tl.int32)
    s_b = tl.zeros((), tl.int64)
    s_hat_b = tl.zeros((), tl.int64)
    for v0 in range(0, K, BLOCK):
        x = tl.load(X + row + v0 + cols, mask=v0 + cols < K, other=-_INF).to(tl.float32)
        x2, wts, s, s_hat = _proposal(x, m, NB)
        cut = v0 // 256 + bidx == ex_block
        wts = tl.where(cut[:, None] & (lane[None, :] == ex_lane), 0, wts)
        s = tl.where(cut, ex_s, s)
        s_hat = tl.where(cut, ex_sh, s_hat)
        hit = (tl.cumsum(s_hat, 0) + acc > thr) & (found == 0)
        idx = tl.min(tl.where(hit, bidx, NB), 0)
        sel = bidx == idx
        sb = tl.sum(tl.where(sel, s, 0), 0)
        w_row = tl.sum(tl.where(sel[:, None], wts, 0), 0)
        x_row = tl.max(tl.where(sel[:, None], x2, -_INF), 0)
        k_in = tl.sum((tl.cumsum(w_row.to(tl.int64), 0) <= cat_floor_mul(sb, w_id)).to(tl.int32), 0)
        at = lane == k_in
        new = idx < NB
        k = tl.where(new, (v0 + idx * 256 + k_in).to(tl.int64), k)
        xk = tl.where(new, tl.max(tl.where(at, x_row, -_INF), 0), xk)
        wk = tl.where(new, tl.sum(tl.where(at, w_row, 0), 0), wk)
        s_b = tl.where(new, sb, s_b)
        s_hat_b = tl.where(new, tl.sum(tl.where(sel, s_hat, 0), 0), s_hat_b)
        found = found | new.to(tl.int32)
        acc += tl.sum(s_hat, 0)
    return k, xk, wk, s_b, s_hat_b


@triton.jit
def _sample_kernel(X, ZT, C, OUT, K, L, key_lo, key_hi, stream, KIND: tl.constexpr, BLOCK: tl.constexpr):
    """z_{t-1} of one position: the mixture sampler of vqfast/reference/diffusion.py posterior_sample."""
    NB: tl.constexpr = BLOCK // 256
    n = tl.program_id(0).to(tl.int64)
    row = n * K
    c = C + (n // L) * 4
    zt = tl.load(ZT + n)
    cols = tl.arange(0, BLOCK)
    bidx = tl.arange(0, NB)
    lane = tl.arange(0, 256)
    m = -_INF
    bad = 0
    for v0 in range(0, K, BLOCK):
        x = tl.load(X + row + v0 + cols, mask=v0 + cols < K, other=-_INF).to(tl.float32)
        m = tl.maximum(m, tl.max(x, 0))
        bad = bad | tl.max(((x != x) | (x == _INF)).to(tl.int32), 0)
    bad = bad | (m == -_INF).to(tl.int32)
    out = tl.where(bad != 0, -1, zt)
    if (bad == 0) & ((KIND == 0) | (zt == K)):
        jz = tl.minimum(zt, K - 1)
        bz = jz // 256
        total = tl.zeros((), tl.int64)
        s_bz = tl.zeros((), tl.int64)
        sh_bz = tl.zeros((), tl.int64)
        mb_bz = -_INF
        w_zt = tl.zeros((), tl.int32)
        for v0 in range(0, K, BLOCK):
            x = tl.load(X + row + v0 + cols, mask=v0 + cols < K, other=-_INF).to(tl.float32)
            x2, wts, s, s_hat = _proposal(x, m, NB)
            total += tl.sum(s_hat, 0)
            sel = v0 // 256 + bidx == bz
            s_bz += tl.sum(tl.where(sel, s, 0), 0)
            sh_bz += tl.sum(tl.where(sel, s_hat, 0), 0)
            mb = tl.max(x2, 1)
            mb_bz = tl.maximum(mb_bz, tl.max(tl.where(sel, tl.where(mb > -_INF, mb, m), -_INF), 0))
            w_zt += tl.sum(tl.sum(tl.where(sel[:, None] & (lane[None, :] == jz % 256), wts, 0), 1), 0)
        if KIND == 1:
            w_zt = w_zt * 0
        ex_block = bz
        if KIND == 1:  # nothing is excluded: the "rest" part is the whole softmax
            ex_block = bz * 0 - 1
        ex_s = s_bz - w_zt.to(tl.int64)
        ex_sh = cat_block_weight(ex_s, m, mb_bz)
        ex_total = total - sh_bz + ex_sh
        x_zt = tl.load(X + row + jz).to(tl.float32)
        spike = tl.load(c + 0) * ((sh_bz.to(tl.float32) * w_zt.to(tl.float32)) / tl.maximum(s_bz, 1).to(tl.float32))
        rest = tl.load(c + 1) * ex_total.to(tl.float32)
        unif = tl.load(c + 2) * total.to(tl.float32)
        base = n << 8
        done = tl.zeros((), tl.int32)
        trial = tl.zeros((), tl.int64)
        while done == 0:
            a0, a1, a2, a3 = block_words(key_lo, key_hi, stream, base + 3 * trial)
            u = uniform_from_words(a0) * ((spike + rest) + unif)
            k = jz
            ok = cat_accept(a3, x_zt, m, w_zt, s_bz, sh_bz)
            if u >= spike:
                if u < spike + rest:
                    k, xk, wk, sb, shb = _walk(X, row, K, m, ex_total, a1, a2, ex_block, jz % 256, ex_s, ex_sh, BLOCK)
                    ok = cat_accept(a3, xk, m, wk, sb, shb)
                else:
                    if KIND == 0:
                        b0, b1, b2, b3 = block_words(key_lo, key_hi, stream, base + 3 * trial + 1)
                        other = (b1.to(tl.int64) * (K - 1)) >> 32
                        k = tl.where(uniform_from_words(b0) < tl.load(c + 3), jz, other + (other >= jz).to(tl.int64))
                    else:
                        k = zt  # the mask state K
                    f0, f1, f2, f3 = block_words(key_lo, key_hi, stream, base + 3 * trial + 2)
                    kf, xf, wf, sf, shf = _walk(X, row, K, m, total, f0, f1, -1, -1, ex_s, ex_sh, BLOCK)
                    ok = cat_accept(f2, xf, m, wf, sf, shf)
            done = (ok | (trial == 63)).to(tl.int32)
            out = k
            trial += 1
    tl.store(OUT + n, out)


@triton.jit
def _uniform_kl_consts(c, X, row, i, j, K, m, s):
    a0, a1, lab, lc, ab, ck, lse, z = _uniform_row(c, X, row, j, K, m, s)
    bq_i = _logaddexp(lab, lc)
    bq_j = tl.where(i == j, bq_i, lc)
    restq = ck * (K - 1).to(tl.float32) + tl.where(i == j, 0.0, ab)
    zq = _uniform_norm(a0, a1, bq_j, restq)
    q_o = tl.exp(a0 + lc - zq)
    q_i = tl.exp(tl.where(i == j, a1, a0) + bq_i - zq)
    q_j = tl.where(i == j, 0.0, tl.exp(a1 + lc - zq))
    return a0, a1, lab, lc, ab, lse, z, zq, q_o, q_i, q_j, bq_i, lab - lc


@triton.jit
def _dprev(lr, y):
    return tl.where(lr == _INF, 1.0, _sigmoid(lr + y))


@triton.jit
def _vlb_kernel(X, ZT, X0, C, KL, STATS, K, L, KIND: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    row = n * K
    c = C + (n // L) * 6
    j = tl.load(ZT + n)
    i = tl.load(X0 + n)
    m, s, ok = _row_lse(X, row, K, BLOCK)
    offs = tl.arange(0, BLOCK)
    xi = tl.load(X + row + i).to(tl.float32)
    if KIND == 1:
        lse = m + tl.log(s)
        kl = tl.where(j < K, 0.0, -tl.load(c + 2) * (xi - lse))
        sg = 0.0
        zp = 0.0
    else:
        a0, a1, lab, lc, ab, lse, zp, zq, q_o, q_i, q_j, bq_i, lr = _uniform_kl_consts(c, X, row, i, j, K, m, s)
        d = 0.0
        sig_o = 0.0
        if q_o > 0:
            for k0 in range(0, K, BLOCK):
                k = k0 + offs
                x = tl.load(X + row + k, mask=k < K, other=-_INF).to(tl.float32)
                u = lr + (x - lse)
                other = (k < K) & (k != i) & (k != j)
                d -= tl.sum(tl.where(other, _softplus(u), 0.0), axis=0)
                sig_o += tl.sum(tl.where(other, _sigmoid(u), 0.0), axis=0)
        xj = tl.load(X + row + j).to(tl.float32)
        b_i = _logaddexp(lab + (xi - lse), lc)
        b_j = _logaddexp(lab + (xj - lse), lc)
        kl = q_i * (bq_i - b_i) + (zp - zq)
        kl += tl.where(q_o > 0, q_o * d, 0.0)
        kl += tl.where(q_j > 0, q_j * (lc - b_j), 0.0)
        p_j = tl.exp(xj - lse)
        rest_p = tl.maximum(s - tl.exp(xj - m), 0.0) / s
        sg = ab * tl.exp(-zp) * (tl.exp(a0) * rest_p + tl.exp(a1) * p_j)
        sg -= q_i * _dprev(lr, xi - lse)
        sg -= tl.where(q_j > 0, q_j * _dprev(lr, xj - lse), 0.0)
        sg -= tl.where(q_o > 0, q_o * sig_o, 0.0)
    tl.store(KL + n, tl.where(ok | ((KIND == 1) & (j < K)), kl, float("nan")))
    tl.store(STATS + 3 * n, tl.where(ok, lse, float("nan")))
    tl.store(STATS + 3 * n + 1, zp)
    tl.store(STATS + 3 * n + 2, sg)


@triton.jit
def _vlb_backward_kernel(GRAD, X, ZT, X0, C, STATS, OUT, K, L, KIND: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    row = n * K
    c = C + (n // L) * 6
    j = tl.load(ZT + n)
    i = tl.load(X0 + n)
    go = tl.load(GRAD + n)
    lse = tl.load(STATS + 3 * n)
    offs = tl.arange(0, BLOCK)
    if KIND == 1:
        ck = tl.where(j < K, 0.0, go * tl.load(c + 2))
        for k0 in range(0, K, BLOCK):
            k = k0 + offs
            x = tl.load(X + row + k, mask=k < K, other=-_INF).to(tl.float32)
            g = ck * (tl.exp(x - lse) - tl.where(k == i, 1.0, 0.0))
            tl.store(OUT + row + k, g.to(OUT.dtype.element_ty), mask=k < K)
    else:
        a0, a1, lab, lc, ab, lse2, zp, zq, q_o, q_i, q_j, bq_i, lr = _uniform_kl_consts(c, X, row, i, j, K, lse, 1.0)
        sg = tl.load(STATS + 3 * n + 2)
        e0 = ab * tl.exp(a0 - zp)
        e1 = ab * tl.exp(a1 - zp)
        for k0 in range(0, K, BLOCK):
            k = k0 + offs
            x = tl.load(X + row + k, mask=k < K, other=-_INF).to(tl.float32)
            y = x - lse
            p = tl.exp(y)
            sig = _dprev(lr, y)
            q = tl.where(k == i, q_i, tl.where(k == j, q_j, q_o))
            qs = tl.where(q > 0, q * sig, 0.0)
            g = go * ((tl.where(k == j, e1, e0) * p - qs) - p * sg)
            tl.store(OUT + row + k, g.to(OUT.dtype.element_ty), mask=k < K)


def _block(n: int) -> int:
    return min(triton.next_power_of_2(max(n, 16)), 4096)


def posterior_logprobs_triton(x: torch.Tensor, zt: torch.Tensor, coef: torch.Tensor, L: int, kind: int):
    """x [N, K], zt [N], coef [B, 6] fp32 -> (log-probs [N, K'] fp32, lse [N] fp32, NaN for bad rows)."""
    N, K = x.shape
    ks = K + kind
    out = torch.empty(N, ks, dtype=torch.float32, device=x.device)
    lse = torch.empty(N, dtype=torch.float32, device=x.device)
    if N:
        _logprobs_kernel[(N,)](x, zt, coef, out, lse, K, ks, L, KIND=kind, BLOCK=_block(ks))
    return out, lse


def posterior_logprobs_backward_triton(grad_out, x, zt, coef, L: int, kind: int, lse) -> torch.Tensor:
    """grad_out [N, K'] fp32, x [N, K], lse [N] (the forward's) -> d / d x [N, K] in x's dtype."""
    N, K = x.shape
    out = torch.empty_like(x)
    if N:
        _logprobs_backward_kernel[(N,)](grad_out, x, zt, coef, lse, out, K, K + kind, L, KIND=kind,
                                        BLOCK=_block(K))
    return out


def posterior_sample_triton(x, zt, coef, L: int, kind: int, key: int, stream: int) -> torch.Tensor:
    """coef [B, 4] = sample_coefficients -> z_{t-1} [N] int64 (-1 where the row of x is not finite)."""
    N, K = x.shape
    out = torch.empty(N, dtype=torch.int64, device=x.device)
    if N:
        lo, hi = split_key(key)
        _sample_kernel[(N,)](x, zt, coef, out, K, L, lo, hi, stream, KIND=kind, BLOCK=max(256, _block(K)),
                             enable_fp_fusion=False)
    return out


def vlb_kl_triton(x, zt, x0, coef, L: int, kind: int):
    """-> (kl [N] fp32, stats [N, 3] fp32 = (lse, Z, SG))."""
    N, K = x.shape
    kl = torch.empty(N, dtype=torch.float32, device=x.device)
    stats = torch.empty(N, 3, dtype=torch.float32, device=x.device)
    if N:
        _vlb_kernel[(N,)](x, zt, x0, coef, kl, stats, K, L, KIND=kind, BLOCK=_block(K))
    return kl, stats


def vlb_kl_backward_triton(grad, x, zt, x0, coef, L: int, kind: int, stats) -> torch.Tensor:
    """grad [N] fp32 -> d loss / d x [N, K] in x's dtype."""
    N, K = x.shape
    out = torch.empty_like(x)
    if N:
        _vlb_backward_kernel[(N,)](grad, x, zt, x0, coef, stats, out, K, L, KIND=kind, BLOCK=_block(K))
    return out
