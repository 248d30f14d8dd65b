"""ema_statistics / ema_update_: every backend (the reference included) against float64 formulas, and bad inputs."""
import pytest
import torch

import vqfast
from vqfast.ops.ema import HAS
from tests.conftest import backend_params

BACKENDS = backend_params("reference", *HAS)
DTYPES = [pytest.param(torch.float32, 1e-5, id="fp32"), pytest.param(torch.float16, 1e-5, id="fp16"),
          pytest.param(torch.bfloat16, 1e-5, id="bf16")]
SHAPES = [pytest.param(1, 1, 3, id="N1-K1"), pytest.param(37, 1, 5, id="K1"), pytest.param(1, 9, 17, id="N1"),
          pytest.param(513, 300, 33, id="odd-empty-codes"), pytest.param(2000, 7, 130, id="duplicates")]


def check_stats(x, idx, K, counts, sums, atol):
    """Against the float64 one-hot formula: counts = 1^T onehot(idx), sums = onehot(idx)^T x."""
    onehot = torch.nn.functional.one_hot(idx.long(), K).double()
    rc, rs = onehot.sum(0).float(), (onehot.T @ x.double()).float()
    assert counts.dtype == torch.float32 and sums.dtype == torch.float32
    assert counts.shape == (K,) and sums.shape == (K, x.shape[1])
    assert torch.equal(counts, rc)
    # fp32 accumulation of up to N rows vs the fp64 oracle: error grows with the member count
    tol = atol * (1 + rc[:, None]) * (1 + x.float().abs().max())
    assert torch.all((sums - rs).abs() <= tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, atol", DTYPES)
@pytest.mark.parametrize("N, K, d", SHAPES)
def test_ema_statistics_matches_reference(backend, dtype, atol, N, K, d):
    g = torch.Generator().manual_seed(N + 31 * K + d)
    x = (torch.randn(N, d, generator=g) * 3).to(dtype)
    idx = torch.randint(0, K, (N,), generator=g)
    if K > 100:
        idx = idx % (K // 2)  # half the codes get no members: their sums must be zeros, not garbage
    counts, sums = vqfast.ops.ema_statistics(x, idx, K, backend=backend)
    check_stats(x, idx, K, counts, sums, atol)
    if K > 100:
        assert torch.all(sums[K // 2:] == 0) and torch.all(counts[K // 2:] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ema_statistics_noncontiguous_int32_and_collapsed(backend):
    g = torch.Generator().manual_seed(3)
    big = torch.randn(300, 70, generator=g)
    x = big[::2, 3:50]  # [150, 47] view with a row stride
    idx = torch.randint(0, 5, (300,), generator=g)[::2].int()
    check_stats(x, idx, 11, *vqfast.ops.ema_statistics(x, idx, 11, backend=backend), 1e-5)
    collapsed = torch.zeros(150, dtype=torch.long)  # every row in one code: the column-split path
    counts, sums = vqfast.ops.ema_statistics(x, collapsed, 4, backend=backend)
    check_stats(x, collapsed, 4, counts, sums, 1e-5)
    assert counts[0] == 150


def _at_thread_counts(fn, counts=(1, 2, 3)):
    before = torch.get_num_threads()
    try:
        out = []
        for threads in counts:
            torch.set_num_threads(threads)
            out.append(fn())
        return out
    finally:
        torch.set_num_threads(before)


CPU = backend_params(*[b for b in HAS if b == "cpu"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N, K, d", [
    pytest.param(3000, 13, 96, id="7-chunks"),  # N >= 32 K per chunk: several chunk partials
    pytest.param(3000, 300, 96, id="1-chunk-column-split"),  # one chunk: threads split the columns
    pytest.param(20000, 5, 7, id="8-chunks-narrow"),  # d < 16: no column split
])
@pytest.mark.parametrize("backend", CPU)
def test_cpu_statistics_deterministic_across_thread_counts(backend, dtype, N, K, d):
    """The summation order is fixed by (N, K): the same bits for every thread count."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(N, d, generator=g).to(dtype)
    idx = torch.randint(0, K, (N,), generator=g)
    idx[: N // 2] = 2  # one big cluster
    results = _at_thread_counts(lambda: vqfast.ops.ema_statistics(x, idx, K, backend=backend))
    for counts, sums in results[1:]:
        assert torch.equal(counts, results[0][0]) and torch.equal(sums, results[0][1])
    check_stats(x, idx, K, *results[0], 1e-5)


def _documented_order_sums(x, idx, K):
    """sums as ema_accumulate.h documents their order: fixed row chunks, each summed in fp32
    in row order into its own partial, the partials added in chunk order."""
    N, d = x.shape
    C = min(max(N // (32 * K), 1), 8)
    total = None
    for c in range(C):
        partial = torch.zeros(K, d)
        for r in range(N * c // C, N * (c + 1) // C):
            partial[idx[r]] += x[r].float()
        total = partial if total is None else total + partial
    return total


@pytest.mark.parametrize("N, K, d, dtype", [
    pytest.param(5000, 3, 300, torch.float32, id="8-chunks-two-strips"),  # 256 + 44 columns
    pytest.param(3000, 200, 37, torch.bfloat16, id="1-chunk-column-split"),
    pytest.param(4000, 2, 512, torch.float16, id="wide"),
    pytest.param(2500, 600, 16, torch.float32, id="few-rows-per-code"),  # no grouping
])
@pytest.mark.parametrize("backend", CPU)
def test_cpu_statistics_bits_follow_the_documented_order(backend, N, K, d, dtype):
    """The bits are those of a plain fp32 row-order sum per chunk, partials added in chunk
    order, at every thread count (any faster pass must keep them)."""
    g = torch.Generator().manual_seed(N + d)
    x = (torch.randn(N, d, generator=g) * torch.logspace(-3, 3, d)).to(dtype)  # rounding differs by order
    idx = torch.randint(0, K, (N,), generator=g)
    expected = _documented_order_sums(x, idx, K)
    for counts, sums in _at_thread_counts(lambda: vqfast.ops.ema_statistics(x, idx, K, backend=backend)):
        assert torch.equal(sums, expected)
        assert torch.equal(counts, torch.bincount(idx, minlength=K).float())


@pytest.mark.parametrize("backend", CPU)
def test_cpu_statistics_index_out_of_range_in_a_late_chunk(backend):
    """The range check runs inside the parallel pass: the first bad row is named whatever the threads."""
    idx = torch.randint(0, 4, (70000,), generator=torch.Generator().manual_seed(5))
    idx[60001], idx[65000] = 9, -3
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with pytest.raises(ValueError, match=r"idx values must be in \[0, K=4\), got idx\[60001\] = 9"):
                vqfast.ops.ema_statistics(torch.randn(70000, 2), idx, 4, backend=backend)
        finally:
            torch.set_num_threads(before)


def test_ema_statistics_empty_batch():
    counts, sums = vqfast.ops.ema_statistics(torch.randn(0, 8), torch.zeros(0, dtype=torch.long), 5)
    assert torch.equal(counts, torch.zeros(5)) and torch.equal(sums, torch.zeros(5, 8))


def _state(K, d, seed):
    g = torch.Generator().manual_seed(seed)
    n = torch.rand(K, generator=g) * 5
    n[0] = 0  # a code that has never been used
    return n, torch.randn(K, d, generator=g), torch.randint(0, 4, (K,), generator=g).float(), torch.randn(K, d, generator=g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, d", [(1, 1), (1, 7), (300, 33)])
@pytest.mark.parametrize("decay, eps", [(0.99, 1e-5), (0.0, 1e-5), (0.5, 0.0), (0.9, 0.1)])
def test_ema_update_matches_reference(backend, K, d, decay, eps):
    n, s, c, t = _state(K, d, K + d)
    # PUT supp. eq. 2 with Laplace smoothing, in float64
    rn, rs = decay * n.double() + (1 - decay) * c.double(), decay * s.double() + (1 - decay) * t.double()
    total = rn.sum()
    want = (rs / ((rn + eps) / (total + K * eps) * total)[:, None]).float()
    rn, rs = rn.float(), rs.float()
    got_n, got_s = n.clone(), s.clone()
    got = vqfast.ops.ema_update_(got_n, got_s, c, t, decay, eps, backend=backend)
    torch.testing.assert_close(got_n, rn, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_s, rs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ema_update_eps0_is_the_seed_equation(backend):
    n, s, c, t = _state(40, 6, 0)
    n = n + 1  # no empty code: e = s / n is finite
    g = 0.99
    want_n, want_s = g * n + (1 - g) * c, g * s + (1 - g) * t
    got = vqfast.ops.ema_update_(n, s, c, t, g, 0.0, backend=backend)
    torch.testing.assert_close(n, want_n)
    torch.testing.assert_close(got, want_s / want_n[:, None])
    torch.testing.assert_close(got, s / n[:, None], rtol=0, atol=0)  # exactly s / n, no smoothing rounding


@pytest.mark.parametrize("x, idx, K, match, err", [
    (torch.randn(4, 3), torch.tensor([0, 1, 2, 5]), 5, r"idx (values )?must be in \[0, K=5\)", ValueError),
    (torch.randn(4, 3), torch.tensor([0, -1, 2, 1]), 5, r"idx (values )?must be in", ValueError),
    (torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), 0, "K must be >= 1", ValueError),
    (torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), 2.0, "K must be an int", TypeError),
    (torch.randn(4, 3), torch.tensor([0, 1, 2]), 5, r"idx must have shape \(4,\)", ValueError),
    (torch.randn(4, 3), torch.tensor([0.0, 1, 2, 1]), 5, "idx must have dtype", TypeError),
    (torch.randn(4, 3, 2), torch.tensor([0, 1, 2, 1]), 5, "x must have 2 dims", ValueError),
    (torch.randn(4, 3).double(), torch.tensor([0, 1, 2, 1]), 5, "x must have dtype", TypeError),
])
def test_ema_statistics_bad_inputs(x, idx, K, match, err):
    with pytest.raises(err, match=match):
        vqfast.ops.ema_statistics(x, idx, K)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [7, -1])
def test_ema_statistics_index_out_of_range_every_backend(backend, bad):
    idx = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    idx[5] = bad
    with pytest.raises(ValueError, match=r"idx (values )?must be in \[0, K=5\)"):
        vqfast.ops.ema_statistics(torch.randn(7, 3), idx, 5, backend=backend)


@pytest.mark.parametrize("kwargs, match, err", [
    (dict(decay=1.0), r"decay must be (<|>=)", ValueError),
    (dict(decay=-0.1), r"decay must be (<|>=)", ValueError),
    (dict(decay="0.9"), "decay must be a real number", TypeError),
    (dict(eps=-1.0), "eps must be >= 0", ValueError),
    (dict(counts=torch.zeros(4)), r"counts must have shape \(5,\)", ValueError),
    (dict(sums=torch.zeros(5, 2)), r"sums must have shape \(5, 3\)", ValueError),
    (dict(cluster_size=torch.zeros(5, dtype=torch.float64)), "cluster_size must have dtype", TypeError),
    (dict(embed_sum=torch.zeros(3, 5).T), "embed_sum must be contiguous", ValueError),
])
def test_ema_update_bad_inputs(kwargs, match, err):
    args = dict(cluster_size=torch.ones(5), embed_sum=torch.zeros(5, 3), counts=torch.ones(5),
                sums=torch.zeros(5, 3), decay=0.99, eps=1e-5)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        vqfast.ops.ema_update_(**args)


def test_ema_update_inputs_aliasing_the_state():
    """counts / sums sharing memory with the state they update: the backends read them before or after
    the update (the new state differed), so it is a ValueError."""
    size, emb = torch.ones(5), torch.zeros(5, 3)
    for counts, sums, match in ((size, torch.zeros(5, 3), "counts shares memory with cluster_size"),
                                (torch.ones(5), emb, "sums shares memory with embed_sum"),
                                (emb[:, 0], torch.zeros(5, 3), "counts shares memory with embed_sum")):
        with pytest.raises(ValueError, match=match):
            vqfast.ops.ema_update_(size, emb, counts, sums)
