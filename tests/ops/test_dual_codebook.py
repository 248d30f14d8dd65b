"""dual_codebook_quantize: every backend against the reference oracle."""
import pytest
import torch

import vqfast
from vqfast.ops.dual_codebook import HAS
from vqfast.reference import dual_codebook as ref
from tests.conftest import backend_params
from tests.ops.test_nearest_code import DTYPES, check_nearest

BACKENDS = backend_params("reference", *HAS)
SHAPES = [pytest.param(1, 1, 1, 3, id="N1-K1-d3"), pytest.param(37, 5, 9, 3, id="small"),
          pytest.param(301, 257, 130, 257, id="odd"), pytest.param(200, 1100, 70, 64, id="K-over-tile")]


def check_dual(x, visible, e, e2, out, metric):
    """Visible rows hold an e index, masked rows an e2 index + K; z_q holds the chosen codes."""
    K = e.shape[0]
    idx, vis = out.indices.reshape(-1), visible.reshape(-1)
    rows = x.reshape(-1, x.shape[-1])
    assert torch.all(idx[vis] < K) and torch.all(idx[~vis] >= K)
    if vis.any():
        check_nearest(rows[vis], e, idx[vis], metric)
    if (~vis).any():
        check_nearest(rows[~vis], e2, idx[~vis] - K, metric)
    codes = torch.where(vis[:, None], e[idx.clamp(max=K - 1)].to(x.dtype),
                        e2[(idx - K).clamp(min=0)].to(x.dtype))
    assert torch.equal(out.z_q.detach().reshape(codes.shape), codes)  # the value is exactly the codes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K, K2, d", SHAPES)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_dual_matches_reference(backend, dtype, N, K, K2, d, metric):
    g = torch.Generator().manual_seed(N + 7 * K + K2 + d)
    x = torch.randn(N, d, generator=g).to(dtype)
    visible = torch.rand(N, generator=g) < 0.6
    e, e2 = torch.randn(K, d, generator=g).to(dtype), torch.randn(K2, d, generator=g).to(dtype)
    out = vqfast.ops.dual_codebook_quantize(x, visible, e, e2, metric=metric, backend=backend)
    assert out.indices.dtype == torch.long and out.indices.shape == (N,) and out.z_q.dtype == dtype
    check_dual(x, visible, e, e2, out, metric)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fill", [True, False], ids=["all-visible", "all-masked"])
def test_dual_all_one_side(backend, fill):
    g = torch.Generator().manual_seed(3)
    x, e, e2 = torch.randn(50, 12, generator=g), torch.randn(7, 12, generator=g), torch.randn(9, 12, generator=g)
    visible = torch.full((50,), fill)
    out = vqfast.ops.dual_codebook_quantize(x, visible, e, e2, backend=backend)
    check_dual(x, visible, e, e2, out, "l2")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dual_ties_batch_dims_noncontiguous(backend):
    g = torch.Generator().manual_seed(4)
    base = torch.randn(6, 24, generator=g)
    e = torch.cat([base, base])  # duplicates: ties go to the lowest index
    e2 = torch.cat([base[:3], base[:3], base[3:]])
    big = torch.randn(3, 8, 40, generator=g)
    x = big[:, ::2, 3:27]  # [3, 4, 24], not contiguous
    x[0, :] = base[:4]
    x[1, :] = base[2:6]
    visible = (torch.rand(3, 8, generator=g) < 0.5)[:, ::2]
    out = vqfast.ops.dual_codebook_quantize(x, visible, e, e2, backend=backend)
    assert out.indices.shape == (3, 4) and out.z_q.shape == (3, 4, 24)
    check_dual(x, visible, e, e2, out, "l2")
    exact_v = torch.arange(6)
    exact_m = torch.tensor([0, 1, 2, 6, 7, 8]) + 12
    assert torch.equal(out.indices[0], torch.where(visible[0], exact_v[:4], exact_m[:4]))
    assert torch.equal(out.indices[1], torch.where(visible[1], exact_v[2:], exact_m[2:]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dual_straight_through_and_losses(backend, dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 9, 16, generator=g).to(dtype).requires_grad_()
    visible = torch.rand(4, 9, generator=g) < 0.5
    e = torch.randn(20, 16, generator=g).to(dtype).requires_grad_()
    e2 = torch.randn(11, 16, generator=g).to(dtype).requires_grad_()
    out = vqfast.ops.dual_codebook_quantize(x, visible, e, e2, backend=backend)
    z_ref, idx_ref, commit_ref, cbl_ref = ref.dual_codebook_quantize(x, visible, e, e2)
    assert torch.equal(out.indices, idx_ref)
    # z_q's value is exactly the codes (the reference's x + (c - x) rounds in fp16/bf16)
    K = e.shape[0]
    codes = torch.where(visible[..., None], e.detach()[idx_ref.clamp(max=K - 1)], e2.detach()[(idx_ref - K).clamp(min=0)])
    assert torch.equal(out.z_q.detach(), codes)
    torch.testing.assert_close(out.commit_loss, commit_ref)
    torch.testing.assert_close(out.codebook_loss, cbl_ref)
    up = torch.randn(x.shape, generator=g).to(dtype)
    (out.z_q * up).sum().add(out.codebook_loss).add(out.commit_loss).backward()
    grads = [t.grad.clone() for t in (x, e, e2)]
    x.grad = e.grad = e2.grad = None
    (z_ref * up).sum().add(cbl_ref).add(commit_ref).backward()
    for got, t in zip(grads, (x, e, e2)):
        torch.testing.assert_close(got, t.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dual_nonfinite_rows_and_empty(backend):
    x = torch.randn(6, 8)
    x[1, 2] = float("nan")
    x[4, 0] = float("-inf")
    visible = torch.tensor([True, True, False, True, False, False])
    e, e2 = torch.randn(5, 8), torch.randn(3, 8)
    out = vqfast.ops.dual_codebook_quantize(x, visible, e, e2, backend=backend)
    assert out.indices[1] == 0 and out.indices[4] == 5  # code 0 of each codebook
    empty = vqfast.ops.dual_codebook_quantize(torch.randn(0, 8), torch.zeros(0, dtype=torch.bool), e, e2,
                                              backend=backend)
    assert empty.indices.shape == (0,) and empty.z_q.shape == (0, 8)


def test_dual_without_codebook_grad_has_no_codebook_loss():
    out = vqfast.ops.dual_codebook_quantize(torch.randn(4, 3), torch.ones(4, dtype=torch.bool),
                                            torch.randn(5, 3), torch.randn(2, 3))
    assert out.codebook_loss is None and out.commit_loss.ndim == 0
    z_q, idx, _ = out
    assert idx.shape == (4,) and z_q.shape == (4, 3)


def test_torch_compile_traces_dual():
    x, vis, e, e2 = torch.randn(9, 16), torch.rand(9) < 0.5, torch.randn(12, 16), torch.randn(5, 16)
    fn = torch.compile(lambda *a: vqfast.ops.dual_codebook_quantize(*a).indices, backend="eager", fullgraph=True)
    assert torch.equal(fn(x, vis, e, e2), vqfast.ops.dual_codebook_quantize(x, vis, e, e2).indices)


@pytest.mark.parametrize("x, visible, e, e2, match, err", [
    (torch.randn(4, 8), torch.ones(5, dtype=torch.bool), torch.randn(3, 8), torch.randn(2, 8),
     r"visible must have shape \(4,\) \(x.shape\[:-1\]\)", ValueError),
    (torch.randn(4, 8), torch.ones(4), torch.randn(3, 8), torch.randn(2, 8), "visible must have dtype", TypeError),
    (torch.randn(4, 8), torch.ones(4, 1, dtype=torch.bool), torch.randn(3, 8), torch.randn(2, 8),
     "visible must have shape", ValueError),
    (torch.randn(4, 8), torch.ones(4, dtype=torch.bool), torch.randn(3, 7), torch.randn(2, 8),
     "x has d=8 but e has d=7", ValueError),
    (torch.randn(4, 8), torch.ones(4, dtype=torch.bool), torch.randn(3, 8), torch.randn(2, 6),
     "x has d=8 but e2 has d=6", ValueError),
    (torch.randn(4, 8), torch.ones(4, dtype=torch.bool), torch.randn(0, 8), torch.randn(2, 8), "e is empty", ValueError),
    (torch.randn(4, 8), torch.ones(4, dtype=torch.bool), torch.randn(3, 8), torch.randn(0, 8), "e2 is empty",
     ValueError),
    (torch.randn(4, 8), torch.ones(4, dtype=torch.bool), torch.randn(8), torch.randn(2, 8), "e must have 2 dims",
     ValueError),
    (torch.randint(0, 3, (4, 8)), torch.ones(4, dtype=torch.bool), torch.randn(3, 8), torch.randn(2, 8),
     "x must have dtype", TypeError),
    (torch.randn(4, 8), torch.ones(4, dtype=torch.bool), torch.randn(3, 8), torch.randn(2, 8).double(),
     "e2 must have dtype", TypeError),
    (torch.tensor(1.0), torch.ones((), dtype=torch.bool), torch.randn(3, 8), torch.randn(2, 8),
     "x must have at least 1 dims", ValueError),
    (torch.randn(4, 8), torch.ones(4, dtype=torch.bool, device="meta"), torch.randn(3, 8), torch.randn(2, 8),
     "one device", ValueError),
    (torch.randn(4, 8), [True] * 4, torch.randn(3, 8), torch.randn(2, 8), "visible must be a torch.Tensor", TypeError),
])
def test_dual_bad_inputs(x, visible, e, e2, match, err):
    with pytest.raises(err, match=match):
        vqfast.ops.dual_codebook_quantize(x, visible, e, e2)


def test_dual_bad_metric_and_backend():
    args = (torch.randn(4, 8), torch.ones(4, dtype=torch.bool), torch.randn(3, 8), torch.randn(2, 8))
    with pytest.raises(ValueError, match="metric must be one of"):
        vqfast.ops.dual_codebook_quantize(*args, metric="dot")
    with pytest.raises(vqfast.BackendUnavailableError):
        vqfast.ops.dual_codebook_quantize(*args, backend="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dual_outputs_fully_written(backend):
    """A first call fills freed buffers with NaN codes; the next call must overwrite every element."""
    g = torch.Generator().manual_seed(8)
    x, visible = torch.randn(300, 24, generator=g), torch.rand(300, generator=g) < 0.5
    nan_e = torch.full((5, 24), float("nan"))
    first = vqfast.ops.dual_codebook_quantize(x, visible, nan_e, nan_e, backend=backend)
    assert torch.isnan(first.z_q).all()
    del first
    e, e2 = torch.randn(40, 24, generator=g), torch.randn(30, 24, generator=g)
    out = vqfast.ops.dual_codebook_quantize(x, visible, e, e2, backend=backend)
    assert not torch.isnan(out.z_q).any()
    check_dual(x, visible, e, e2, out, "l2")
