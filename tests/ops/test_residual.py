"""residual_quantize: every backend against the reference oracle."""
import pytest
import torch

import vqfast
from vqfast.ops.residual import HAS
from vqfast.reference import residual as ref
from vqfast.reference.residual import level_codebooks
from tests.conftest import backend_params
from tests.ops.test_nearest_code import DTYPES, check_nearest

BACKENDS = backend_params("reference", *HAS)
SHAPES = [pytest.param(1, 1, 3, 1, id="N1-K1-d3-D1"), pytest.param(61, 257, 257, 2, id="odd"),
          pytest.param(100, 1100, 32, 3, id="K-over-tile")]


def check_residual(x, codebook, depth, out, metric):
    """Level by level: the index is the oracle's nearest code of the residual the kernel held."""
    r = x.reshape(-1, x.shape[-1]).float()
    idx = out.indices.reshape(-1, depth)
    total = torch.zeros_like(r)
    for i, cb in enumerate(level_codebooks(codebook, depth)):
        check_nearest(r, cb, idx[:, i], metric)
        c = cb[idx[:, i]].float()
        r, total = r - c, total + c
    xr = x.reshape(-1, x.shape[-1])
    expected = xr + (total.to(x.dtype) - xr)  # straight-through form
    assert torch.equal(out.z_q.detach().reshape(expected.shape), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K, d, depth", SHAPES)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-level"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_residual_matches_reference(backend, dtype, N, K, d, depth, shared, metric):
    g = torch.Generator().manual_seed(N + 3 * K + d + depth)
    x = torch.randn(N, d, generator=g).to(dtype)
    cb = torch.randn(*(() if shared else (depth,)), K, d, generator=g).to(dtype)
    out = vqfast.ops.residual_quantize(x, cb, depth, metric=metric, backend=backend)
    assert out.indices.shape == (N, depth) and out.indices.dtype == torch.long and out.z_q.dtype == dtype
    check_residual(x, cb, depth, out, metric)


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_exact_codes_ties_batch_noncontiguous(backend):
    g = torch.Generator().manual_seed(6)
    base = torch.randn(5, 20, generator=g)
    cb = torch.cat([base, base, torch.zeros(1, 20)])  # duplicates; a zero code ends the chain
    big = torch.randn(2, 6, 30, generator=g)
    x = big[:, ::2, 5:25]  # [2, 3, 20], not contiguous
    x[0] = base[:3]
    out = vqfast.ops.residual_quantize(x, cb, 3, backend=backend)
    check_residual(x, cb, 3, out, "l2")
    # an exact code: level 1 takes it (lowest of the duplicates), then the zero residual takes the zero code
    assert torch.equal(out.indices[0], torch.tensor([[0, 10, 10], [1, 10, 10], [2, 10, 10]]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-level"])
def test_residual_straight_through_and_losses(backend, dtype, shared):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 7, 16, generator=g).to(dtype).requires_grad_()
    cb = torch.randn(*(() if shared else (3,)), 24, 16, generator=g).to(dtype).requires_grad_()
    out = vqfast.ops.residual_quantize(x, cb, 3, backend=backend)
    z_ref, idx_ref, commit_ref, cbl_ref = ref.residual_quantize(x, cb, 3)
    assert torch.equal(out.indices, idx_ref)
    torch.testing.assert_close(out.z_q, z_ref)
    torch.testing.assert_close(out.commit_loss, commit_ref)
    torch.testing.assert_close(out.codebook_loss, cbl_ref)
    up = torch.randn(x.shape, generator=g).to(dtype)
    (out.z_q * up).sum().add(out.codebook_loss).add(out.commit_loss).backward()
    gx, gc = x.grad.clone(), cb.grad.clone()
    x.grad = cb.grad = None
    (z_ref * up).sum().add(cbl_ref).add(commit_ref).backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gc, cb.grad)


def test_residual_commit_loss_is_partial_sum_form():
    x, cb = torch.randn(10, 6), torch.randn(8, 6)
    out = vqfast.ops.residual_quantize(x, cb, 2)
    s1 = cb[out.indices[:, 0]]
    s2 = s1 + cb[out.indices[:, 1]]
    expected = ((x - s1).square().mean() + (x - s2).square().mean()) / 2
    torch.testing.assert_close(out.commit_loss, expected)
    assert out.codebook_loss is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_nonfinite_rows_and_empty(backend):
    x = torch.randn(4, 8)
    x[2, 5] = float("nan")
    out = vqfast.ops.residual_quantize(x, torch.randn(6, 8), 3, backend=backend)
    assert torch.equal(out.indices[2], torch.zeros(3, dtype=torch.long))
    empty = vqfast.ops.residual_quantize(torch.randn(0, 8), torch.randn(6, 8), 2, backend=backend)
    assert empty.indices.shape == (0, 2) and empty.z_q.shape == (0, 8)


def test_residual_depth_from_per_level_codebook_and_compile():
    x, cb = torch.randn(9, 16), torch.randn(3, 12, 16)
    assert vqfast.ops.residual_quantize(x, cb).indices.shape == (9, 3)
    fn = torch.compile(lambda a, b: vqfast.ops.residual_quantize(a, b, 2).indices, backend="eager", fullgraph=True)
    assert torch.equal(fn(x, cb[0]), vqfast.ops.residual_quantize(x, cb[0], 2).indices)


@pytest.mark.parametrize("x, codebook, depth, match, err", [
    (torch.randn(4, 8), torch.randn(5, 7), 2, "x has d=8 but codebook has d=7", ValueError),
    (torch.randn(4, 8), torch.randn(3, 5, 7), None, "x has d=8 but codebook has d=7", ValueError),
    (torch.randn(4, 8), torch.randn(8), 2, "codebook must have 2 or 3 dims", ValueError),
    (torch.randn(4, 8), torch.randn(2, 2, 5, 8), 2, "codebook must have 2 or 3 dims", ValueError),
    (torch.randn(4, 8), torch.randn(0, 8), 2, "codebook is empty", ValueError),
    (torch.randn(4, 8), torch.randn(3, 0, 8), 3, "codebook is empty", ValueError),
    (torch.randn(4, 8), torch.randn(3, 5, 8), 2, r"codebook must have shape \(2, 5, 8\) \(one \[K, d\] level per depth=2\)", ValueError),
    (torch.randn(4, 8), torch.randn(5, 8), None, "depth is required", ValueError),
    (torch.randn(4, 8), torch.randn(5, 8), 0, "depth must be >= 1", ValueError),
    (torch.randn(4, 8), torch.randn(5, 8), 2.0, "depth must be an int", TypeError),
    (torch.randn(4, 8), torch.randn(5, 8), True, "depth must be an int", TypeError),
    (torch.randint(0, 3, (4, 8)), torch.randn(5, 8), 2, "x must have dtype", TypeError),
    (torch.randn(4, 8), torch.randint(0, 3, (5, 8)), 2, "codebook must have dtype", TypeError),
    (torch.tensor(1.0), torch.randn(5, 8), 2, "x must have at least 1 dims", ValueError),
    (torch.randn(4, 8), torch.randn(5, 8, device="meta"), 2, "one device", ValueError),
    ("x", torch.randn(5, 8), 2, "x must be a torch.Tensor", TypeError),
])
def test_residual_bad_inputs(x, codebook, depth, match, err):
    with pytest.raises(err, match=match):
        vqfast.ops.residual_quantize(x, codebook, depth)


def test_residual_bad_metric_and_backend():
    with pytest.raises(ValueError, match="metric must be one of"):
        vqfast.ops.residual_quantize(torch.randn(4, 8), torch.randn(5, 8), 2, metric="dot")
    with pytest.raises(vqfast.BackendUnavailableError):
        vqfast.ops.residual_quantize(torch.randn(4, 8), torch.randn(5, 8), 2, backend="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_outputs_fully_written(backend):
    """A first call fills freed buffers with NaN codes; the next call must overwrite every element."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(300, 24, generator=g)
    first = vqfast.ops.residual_quantize(x, torch.full((5, 24), float("nan")), 2, backend=backend)
    assert torch.isnan(first.z_q).all()
    del first
    cb = torch.randn(40, 24, generator=g)
    out = vqfast.ops.residual_quantize(x, cb, 2, backend=backend)
    assert not torch.isnan(out.z_q).any()
    check_residual(x, cb, 2, out, "l2")
