"""quantize / dual_codebook_quantize in one pass: the kernel's per-row squared error
(commitment loss), z_q exactly the codes, the straight-through autograd function."""
import pytest
import torch

import vqfast
from vqfast.ops.dual_codebook import HAS as DUAL_HAS
from vqfast.ops.nearest_code import HAS
from vqfast.reference import dual_codebook as ref_dual
from vqfast.reference import nearest_code as ref
from tests.conftest import backend_params
from tests.ops.test_nearest_code import DTYPES

BACKENDS = backend_params("reference", *HAS)
DUAL_BACKENDS = backend_params("reference", *DUAL_HAS)
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_quantize_commit_loss_without_grad(backend, dtype, metric):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 67, 33, generator=g).to(dtype)
    cb = torch.randn(150, 33, generator=g).to(dtype)
    out = vqfast.ops.quantize(x, cb, metric=metric, backend=backend)
    z_ref, idx_ref, commit_ref, _ = ref.quantize(x, cb, metric)
    assert torch.equal(out.indices, idx_ref)
    assert torch.equal(out.z_q, cb[idx_ref])  # exactly the codes, no x + (c - x) rounding
    assert out.z_q.grad_fn is None and out.commit_loss.dtype == torch.float32
    torch.testing.assert_close(out.commit_loss, commit_ref, rtol=TOL[dtype], atol=0)


@pytest.mark.parametrize("backend", DUAL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_dual_commit_loss_without_grad(backend, dtype, metric):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(205, 40, generator=g).to(dtype)
    visible = torch.rand(205, generator=g) < 0.6
    e, e2 = torch.randn(70, 40, generator=g).to(dtype), torch.randn(90, 40, generator=g).to(dtype)
    out = vqfast.ops.dual_codebook_quantize(x, visible, e, e2, metric=metric, backend=backend)
    _, idx_ref, commit_ref, _ = ref_dual.dual_codebook_quantize(x, visible, e, e2, metric)
    assert torch.equal(out.indices, idx_ref)
    torch.testing.assert_close(out.commit_loss, commit_ref, rtol=TOL[dtype], atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_quantize_grad_noncontiguous_and_no_grad_mode(backend):
    g = torch.Generator().manual_seed(13)
    base = torch.randn(5, 30, 50, generator=g, requires_grad=True)
    x = base[:, ::3, 7:31]  # [5, 10, 24], not contiguous, a view of a leaf
    cb = torch.randn(40, 24, generator=g)
    out = vqfast.ops.quantize(x, cb, backend=backend)
    z_ref, idx_ref, commit_ref, _ = ref.quantize(x, cb)
    up = torch.randn(x.shape, generator=g)
    (out.z_q * up).sum().add(3.0 * out.commit_loss).backward()
    got = base.grad.clone()
    base.grad = None
    (z_ref * up).sum().add(3.0 * commit_ref).backward()
    torch.testing.assert_close(got, base.grad)
    with torch.no_grad():
        quiet = vqfast.ops.quantize(x, cb, backend=backend)
    assert quiet.z_q.grad_fn is None and not quiet.commit_loss.requires_grad


@pytest.mark.parametrize("backend", DUAL_BACKENDS)
def test_dual_commit_grad_only(backend):
    """Only the commitment loss used: x's gradient is 2 (x - c) / numel."""
    g = torch.Generator().manual_seed(14)
    x = torch.randn(31, 16, generator=g, requires_grad=True)
    visible = torch.rand(31, generator=g) < 0.5
    e, e2 = torch.randn(9, 16, generator=g), torch.randn(6, 16, generator=g)
    out = vqfast.ops.dual_codebook_quantize(x, visible, e, e2, backend=backend)
    out.commit_loss.backward()
    torch.testing.assert_close(x.grad, 2 * (x.detach() - out.z_q.detach()) / x.numel())


@pytest.mark.parametrize("backend", BACKENDS)
def test_quantize_nonfinite_row_commit_is_nan(backend):
    x = torch.randn(5, 8)
    x[2, 3] = float("nan")
    cb = torch.randn(4, 8)
    out = vqfast.ops.quantize(x, cb, backend=backend)
    assert out.indices[2] == 0 and torch.equal(out.z_q[2], cb[0])
    assert torch.isnan(out.commit_loss)
    empty = vqfast.ops.quantize(torch.randn(0, 8), cb, backend=backend)
    assert empty.z_q.shape == (0, 8) and torch.isnan(empty.commit_loss)  # mean of nothing, as mse_loss


@pytest.mark.skipif(not hasattr(torch.ops, "vqfast_cpu") or not vqfast.backends()["cpu"]["available"],
                    reason="cpu backend not built")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", [0, 1], ids=["l2", "cosine"])
def test_cpu_kernels_write_every_squared_error(dtype, metric):
    """A first call leaves NaN in freed buffers; every element of the next call's outputs is written."""
    g = torch.Generator().manual_seed(15)
    x = torch.randn(301, 20, generator=g).to(dtype)
    visible = torch.rand(301, generator=g) < 0.5
    nan_cb = torch.full((3, 20), float("nan")).to(dtype)
    for _ in range(2):  # the NaN results are freed and their memory reused
        torch.ops.vqfast_cpu.quantize(x, nan_cb, metric)
        torch.ops.vqfast_cpu.dual_codebook_quantize(x, visible, nan_cb, nan_cb, metric)
    cb, cb2 = torch.randn(50, 20, generator=g).to(dtype), torch.randn(30, 20, generator=g).to(dtype)
    z_q, idx, sq = torch.ops.vqfast_cpu.quantize(x, cb, metric)
    assert sq.dtype == torch.float64 and sq.shape == (301,)
    expected = (x.double() - z_q.double()).square().sum(1)
    torch.testing.assert_close(sq, expected, rtol=1e-6, atol=1e-9)
    z_q, idx, sq = torch.ops.vqfast_cpu.dual_codebook_quantize(x, visible, cb, cb2, metric)
    torch.testing.assert_close(sq, (x.double() - z_q.double()).square().sum(1), rtol=1e-6, atol=1e-9)


def test_torch_compile_traces_quantize_and_ema_statistics():
    x, cb = torch.randn(9, 16), torch.randn(12, 16)
    fn = torch.compile(lambda a, b: vqfast.ops.quantize(a, b).commit_loss, backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(x, cb), vqfast.ops.quantize(x, cb).commit_loss)
    idx = torch.randint(0, 12, (9,))
    stats = torch.compile(lambda a, i: vqfast.ops.ema_statistics(a, i, 12), backend="eager", fullgraph=True)
    for got, want in zip(stats(x, idx), vqfast.ops.ema_statistics(x, idx, 12)):
        torch.testing.assert_close(got, want)
