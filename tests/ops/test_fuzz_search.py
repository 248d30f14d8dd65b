"""Fuzz of the search ops (nearest_code, quantize, the *_with_statistics ops, dual_codebook_quantize,
residual_quantize), ema_statistics / ema_update_ and kmeans against their references, on seeded
random cases (tests/ops/fuzz_cases.py): odd sizes, exact ties and duplicate codes, signed zeros,
NaN/inf rows, fp16/bf16, non-contiguous inputs.

Rules (those of test_nearest_code, test_ema, test_residual): an index equals the oracle's where its
best-vs-second margin is clear, else its code is as near; a code equal to a lower-indexed one never
wins (ties: lowest index); a NaN/inf row takes code 0 with dist NaN; statistics as ema_statistics.
The reference backend is the oracle itself, so the kernels (cpu, triton) are fuzzed.
"""
import pytest
import torch
import torch.nn.functional as F

import vqfast
from vqfast.reference import ema as ref_ema
from vqfast.reference import kmeans as ref_kmeans
from vqfast.reference import nearest_code as ref_nc
from tests.ops.fuzz_cases import DTYPES, PATTERNS, Case, examples
from tests.ops.test_ema import check_stats
from tests.ops.test_nearest_code import check_indices, check_nearest
from tests.ops.test_residual import check_residual


def _search_case(name, i, backend, nan=True):
    """x [..., d], codebook [K, d] (some codes duplicated, some rows of x equal to codes), metric,
    the NaN/inf rows of x, and the codes that duplicate a lower-indexed code."""
    c = Case(name, i, backend)
    dtype, pattern, metric = c.pick(DTYPES), c.pick(PATTERNS), c.pick(("l2", "cosine"))
    N, K, d = c.int(0, 70, 12), c.int(1, 90, 20), c.int(1, 40, 16)
    cb = c.floats((K, d), dtype, pattern)
    if K > 1 and c.chance(0.5):  # duplicate codes: the lowest index must win their ties
        for _ in range(c.int(1, K)):
            j = c.int(1, K - 1)
            cb[j] = cb[c.int(0, j - 1)]
    elif c.chance(0.2):  # every code the same (more tied candidates than the CPU filter keeps)
        cb[:] = cb[0]
    x = c.floats((N, d), dtype, pattern)
    if N and c.chance(0.5):  # rows exactly on codes
        rows = torch.randint(0, N, (max(1, N // 3),), generator=c.g)
        x[rows] = cb[torch.randint(0, K, (rows.numel(),), generator=c.g)]
    bad = torch.zeros(N, dtype=torch.bool)
    if nan and N and c.chance(0.3):
        x, bad = c.nan_rows(x)
    if N % 2 == 0 and c.chance(0.5):
        x = x.reshape(2, N // 2, d)
        bad = bad.reshape(2, N // 2)
    same = (cb[:, None, :] == cb[None, :, :]).all(-1)
    later_duplicate = (same & torch.ones(K, K, dtype=torch.bool).tril(-1)).any(1)
    return c, c.layout(x), c.layout(cb), metric, bad, later_duplicate


def _check_search(x, cb, idx, metric, bad, later_duplicate, dist=None):
    fine = ~bad.reshape(-1)
    rows, flat = x.reshape(-1, x.shape[-1])[fine], idx.reshape(-1)
    if rows.shape[0] and dist is None:
        check_nearest(rows, cb, flat[fine], metric)
    elif rows.shape[0]:
        check_indices(rows, cb, flat[fine], dist.reshape(-1)[fine], metric)
    if dist is not None:
        assert torch.isnan(dist.reshape(-1)[~fine]).all(), "a NaN/inf row has dist NaN"
    assert (flat[~fine] == 0).all(), "a NaN/inf row takes code 0"
    assert not later_duplicate[flat].any(), "a code equal to a lower-indexed one won a tie"


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_nearest_code(backend, i):
    _, x, cb, metric, bad, dup = _search_case("nearest_code", i, backend)
    idx, dist = vqfast.ops.nearest_code(x, cb, metric=metric, backend=backend)
    assert idx.shape == x.shape[:-1] and dist.dtype == torch.float32
    _check_search(x, cb, idx, metric, bad, dup, dist)


def _quantize_oracle(x, cb, idx):
    """The reference's quantize formulas given the indices: (z_q, commit_loss, codebook_loss)."""
    codes = F.embedding(idx, cb).to(x.dtype)
    return (codes.detach() + (x - x.detach()), F.mse_loss(x.float(), codes.detach().float()),
            F.mse_loss(x.detach().float(), codes.float()))


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_quantize_and_backward(backend, i):
    c, x, cb, metric, bad, dup = _search_case("quantize", i, backend)
    x, cb = x.detach().requires_grad_(), cb.detach().requires_grad_()
    out = vqfast.ops.quantize(x, cb, metric=metric, backend=backend)
    _check_search(x.detach(), cb.detach(), out.indices, metric, bad, dup)
    want = _quantize_oracle(x, cb, out.indices)
    assert torch.equal(out.z_q.detach(), cb.detach()[out.indices].to(x.dtype)), "z_q is exactly the chosen codes"
    torch.testing.assert_close(out.commit_loss, want[1], equal_nan=True)
    if bool(bad.any()) or x.numel() == 0:
        return  # NaN losses: no gradient to compare
    up = c.floats(x.shape, x.dtype, "plain")
    got = torch.autograd.grad((out.z_q * up).sum() + out.commit_loss + out.codebook_loss, (x, cb))
    lowp = torch.autograd.grad((want[0] * up).sum() + want[1] + want[2], (x, cb))
    exact = [t.detach().double().requires_grad_() for t in (x, cb)]
    want = _quantize_oracle(*exact, out.indices)
    exp = torch.autograd.grad((want[0] * up.double()).sum() + want[1] + want[2], exact)
    for g, r, e in zip(got, lowp, exp):  # error <= 2x the oracle's own in x's dtype (+ one rounding)
        atol = torch.finfo(x.dtype).eps * (1 + float(e.abs().max()))
        assert torch.all((g.double() - e).abs() <= 2 * (r.double() - e).abs() + atol)


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_with_statistics(backend, i):
    """nearest_code_with_statistics / quantize_with_statistics = nearest_code / quantize then
    ema_statistics (bit for bit on the CPU); the statistics as the reference's."""
    _, x, cb, metric, bad, dup = _search_case("with_statistics", i, backend)
    K = cb.shape[0]
    idx, dist, counts, sums = vqfast.ops.nearest_code_with_statistics(x, cb, metric=metric, backend=backend)
    _check_search(x, cb, idx, metric, bad, dup, dist)
    exact = dict(atol=0, rtol=0, equal_nan=True)
    plain = vqfast.ops.nearest_code(x, cb, metric=metric, backend=backend)
    assert torch.equal(idx, plain[0])
    torch.testing.assert_close(dist, plain[1], **exact)
    flat = x.reshape(-1, x.shape[-1])
    _check_statistics(flat, idx.reshape(-1), K, counts, sums)
    same = exact if backend == "cpu" else dict(equal_nan=True)  # Triton's sums use atomics
    torch.testing.assert_close(vqfast.ops.ema_statistics(flat, idx.reshape(-1), K, backend=backend),
                               (counts, sums), **same)
    q, q_counts, q_sums = vqfast.ops.quantize_with_statistics(x, cb, metric=metric, backend=backend)
    assert torch.equal(q.indices, idx) and torch.equal(q_counts, counts)
    assert torch.equal(q.z_q, cb[idx].to(x.dtype))
    torch.testing.assert_close(q_sums, sums, **same)


def _check_statistics(x, idx, K, counts, sums):
    """check_stats of test_ema, with rows of NaN/inf making their code's sums NaN/inf in both."""
    want_counts, want_sums = ref_ema.ema_statistics(x, idx, K)
    assert torch.equal(counts, want_counts)
    if x.shape[0] == 0:
        assert not sums.any()
        return
    finite = torch.isfinite(want_sums).all(1)
    assert torch.equal(torch.isfinite(sums).all(1), finite)
    fine = torch.isfinite(x).all(1)
    if bool(fine.all()):
        check_stats(x, idx, K, counts, sums, 1e-5)
        return
    tol = 1e-5 * (1 + want_counts[:, None]) * (1 + x[fine].float().abs().amax() if fine.any() else 1.0)
    assert torch.all((sums - want_sums)[finite].abs() <= tol[finite])


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_dual_codebook(backend, i):
    c, x, e, metric, bad, dup = _search_case("dual_codebook", i, backend)
    e2 = c.layout(c.floats((c.int(1, 40, 10), e.shape[1]), e.dtype, c.pick(PATTERNS)))
    visible = torch.rand(x.shape[:-1], generator=c.g) < 0.5
    out = vqfast.ops.dual_codebook_quantize(x, visible, e, e2, metric=metric, backend=backend)
    K = e.shape[0]
    vis = visible.reshape(-1)
    flat, idx, b = x.reshape(-1, x.shape[-1]), out.indices.reshape(-1), bad.reshape(-1)
    _check_search(flat[vis], e, idx[vis], metric, b[vis], dup)
    same2 = (e2[:, None, :] == e2[None, :, :]).all(-1)
    dup2 = (same2 & torch.ones(len(e2), len(e2), dtype=torch.bool).tril(-1)).any(1)
    _check_search(flat[~vis], e2, idx[~vis] - K, metric, b[~vis], dup2)
    codes = torch.where(vis[:, None], e[idx.clamp_max(K - 1)], e2[(idx - K).clamp_min(0)])
    assert torch.equal(out.z_q.detach().reshape(codes.shape), codes)
    torch.testing.assert_close(out.commit_loss, F.mse_loss(flat.float(), codes.float()), equal_nan=True)


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_residual(backend, i):
    c, x, cb, metric, _, _ = _search_case("residual", i, backend, nan=False)
    depth = c.int(1, 4, 2)
    if c.chance(0.5):  # one codebook per level
        cb = c.floats((depth, *cb.shape), cb.dtype, c.pick(PATTERNS))
    out = vqfast.ops.residual_quantize(x, cb, depth, metric=metric, backend=backend)
    assert out.indices.shape == (*x.shape[:-1], depth)
    if x.numel():
        check_residual(x, cb, depth, out, metric)


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_ema_statistics(backend, i):
    c = Case("ema_statistics", i, backend)
    N, K, d = c.int(0, 300, 40), c.int(1, 60, 12), c.int(1, 70, 16)
    x = c.floats((N, d), c.pick(DTYPES), c.pick(PATTERNS))
    if N and c.chance(0.3):
        x, _ = c.nan_rows(x)
    idx = torch.randint(0, K, (N,), generator=c.g)
    if c.chance(0.3):  # every row in one code
        idx = torch.full((N,), c.int(0, K - 1), dtype=torch.long)
    idx = idx.to(c.pick((torch.int64, torch.int32)))
    x = c.layout(x)
    counts, sums = vqfast.ops.ema_statistics(x, idx, K, backend=backend)
    _check_statistics(x, idx.long(), K, counts, sums)


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_ema_update(backend, i):
    c = Case("ema_update", i, backend)
    K, d = c.int(1, 60, 12), c.int(1, 70, 16)
    decay, eps = c.pick((0.0, 0.5, 0.99)), c.pick((0.0, 1e-5, 1.0))
    state = [torch.rand(K, generator=c.g) * c.int(0, 3), c.floats((K, d), torch.float32, c.pick(PATTERNS))]
    counts = torch.randint(0, 4, (K,), generator=c.g).float()
    sums = c.layout(c.floats((K, d), torch.float32, c.pick(PATTERNS)))
    mine = [t.clone() for t in state]
    got = vqfast.ops.ema_update_(*mine, counts, sums, decay, eps, backend=backend)
    want_state = [t.clone() for t in state]
    want = ref_ema.ema_update_(*want_state, counts, sums.contiguous(), decay, eps)
    torch.testing.assert_close(mine, want_state)
    torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_kmeans(backend, i):
    """Lloyd from a given init: the first inertia equals the reference's, inertia never rises,
    and the assignments are the nearest centroids of the returned centroids."""
    from tests.ops.op_calls import backend_env

    c = Case("kmeans", i, backend)
    P, K, d = c.int(2, 80, 24), c.int(1, 8, 4), c.int(1, 12, 6)
    K = min(K, P)
    x = c.floats((P, d), c.pick(DTYPES), c.pick(("plain", "ties", "large")))
    init = x[torch.randperm(P, generator=c.g)[:K]].float()
    with backend_env(backend):
        res = vqfast.kmeans(c.layout(x), K, iters=c.int(0, 4, 2), init=init)
    _, _, want = ref_kmeans.lloyd(x, init, iters=0)
    torch.testing.assert_close(res.inertia[0], want[0], rtol=1e-4, atol=1e-3)
    assert torch.all(res.inertia[1:] <= res.inertia[:-1] * (1 + 1e-4) + 1e-3)
    check_nearest(x.float(), res.centroids, res.assignments, "l2")
    best = ref_nc.code_distances(x.float(), res.centroids).amin(1).sum()
    torch.testing.assert_close(res.inertia[-1], best, rtol=1e-4, atol=1e-3)
