"""nearest_code_with_statistics / quantize_with_statistics: equal to nearest_code / quantize
followed by ema_statistics (bit for bit on the CPU, every thread count), bad inputs."""
import pytest
import torch

import vqfast
from vqfast import ops
from tests.conftest import backend_params
from tests.ops.test_nearest_code import check_nearest

BACKENDS = backend_params("reference", "cpu")
SHAPES = [pytest.param(1, 1, 3, id="N1-K1"), pytest.param(37, 5, 16, id="small"),
          pytest.param(513, 300, 33, id="odd-empty-codes"), pytest.param(3000, 13, 96, id="7-chunks")]


def _inputs(N, K, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed + N + 7 * K + d)
    return (torch.randn(N, d, generator=g) * 2).to(dtype), torch.randn(K, d, generator=g)


def _assert_equal(got, want):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # bit-equal (NaN where NaN)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("N, K, d", SHAPES)
def test_nearest_code_with_statistics_equals_the_two_ops(backend, dtype, metric, N, K, d):
    x, cb = _inputs(N, K, d, dtype)
    got = ops.nearest_code_with_statistics(x, cb, metric=metric, backend=backend)
    idx, dist = ops.nearest_code(x, cb, metric=metric, backend=backend)
    _assert_equal(got, (idx, dist, *ops.ema_statistics(x, idx, K, backend=backend)))
    check_nearest(x, cb, got.indices, metric)  # against float64 distances, margin-aware
    onehot = torch.nn.functional.one_hot(got.indices, K).double()  # the statistics' float64 formula
    assert torch.equal(got.counts, onehot.sum(0).float())
    torch.testing.assert_close(got.sums, (onehot.T @ x.double()).float(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("N, K, d", SHAPES)
def test_quantize_with_statistics_equals_the_two_ops(backend, dtype, N, K, d):
    x, cb = _inputs(N, K, d, dtype, seed=1)
    (z_q, idx, commit), counts, sums = ops.quantize_with_statistics(x, cb, backend=backend)
    want = ops.quantize(x, cb, backend=backend)
    _assert_equal((z_q, idx, commit), want)
    _assert_equal((counts, sums), ops.ema_statistics(x, idx, K, backend=backend))


def test_batch_dims_noncontiguous_duplicate_codes_and_grads():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 40, 50, generator=g)[:, ::2, 5:37]  # [3, 20, 32] view
    cb = torch.randn(9, 32, generator=g)
    cb[4] = cb[1]  # duplicate code: ties go to the lowest index, code 4 gets no members
    got = ops.nearest_code_with_statistics(x, cb)
    assert got.indices.shape == (3, 20) and got.counts[4] == 0 and torch.all(got.sums[4] == 0)
    flat = x.reshape(-1, 32)
    _assert_equal(got[2:], ops.ema_statistics(flat, got.indices.reshape(-1), 9))
    xr, cbr = x.clone().requires_grad_(), cb.clone().requires_grad_()
    q = ops.quantize_with_statistics(xr, cbr)
    (q.quantized.z_q.square().sum() + q.quantized.commit_loss + q.quantized.codebook_loss).backward()
    xw, cbw = x.clone().requires_grad_(), cb.clone().requires_grad_()
    w = ops.quantize(xw, cbw)
    (w.z_q.square().sum() + w.commit_loss + w.codebook_loss).backward()
    assert torch.equal(xr.grad, xw.grad) and torch.equal(cbr.grad, cbw.grad)


@pytest.mark.parametrize("N, K, d", [pytest.param(3000, 13, 96, id="7-chunks"),
                                     pytest.param(2500, 300, 40, id="1-chunk")])
def test_cpu_deterministic_across_thread_counts(N, K, d):
    x, cb = _inputs(N, K, d, seed=3)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append((ops.nearest_code_with_statistics(x, cb, backend="cpu"),
                            ops.quantize_with_statistics(x, cb, backend="cpu")))
    finally:
        torch.set_num_threads(before)
    for (a, q) in results[1:]:
        _assert_equal(a, results[0][0])
        _assert_equal((*q.quantized, q.counts, q.sums), (*results[0][1].quantized, results[0][1].counts,
                                                         results[0][1].sums))


def test_nan_rows_take_code_zero_and_empty_batch():
    x, cb = _inputs(50, 6, 8, seed=4)
    x[7, 3] = float("nan")
    got = ops.nearest_code_with_statistics(x, cb)
    assert got.indices[7] == 0 and torch.isnan(got.sums[0, 3])
    _assert_equal(got[2:], ops.ema_statistics(x, got.indices, 6))
    empty = ops.nearest_code_with_statistics(torch.randn(0, 8), cb)
    assert empty.indices.shape == (0,) and torch.equal(empty.counts, torch.zeros(6))
    assert torch.equal(empty.sums, torch.zeros(6, 8))


def test_torch_compile_traces_the_ops():
    x, cb = _inputs(64, 5, 16, seed=5)
    f = torch.compile(lambda x, cb: ops.nearest_code_with_statistics(x, cb), fullgraph=True)
    _assert_equal(f(x, cb), ops.nearest_code_with_statistics(x, cb))


@pytest.mark.parametrize("fn", [ops.nearest_code_with_statistics, ops.quantize_with_statistics])
@pytest.mark.parametrize("x, cb, kwargs, match, err", [
    (torch.randn(4, 3), torch.randn(5, 2), {}, "codebook", ValueError),
    (torch.randn(4, 3), torch.randn(5, 3), dict(metric="dot"), "metric", ValueError),
    (torch.randn(4, 3).double(), torch.randn(5, 3), {}, "x must have dtype", TypeError),
    (torch.randint(0, 3, (4, 3)), torch.randn(5, 3), {}, "x must have dtype", TypeError),
    (torch.randn(4, 3), torch.randn(5, 3), dict(backend="nope"), "backend must be one of", ValueError),
])
def test_bad_inputs(fn, x, cb, kwargs, match, err):
    with pytest.raises(err, match=match):
        fn(x, cb, **kwargs)


def test_public_names():
    assert vqfast.ops.nearest_code_with_statistics is ops.nearest_code_with_statistics
