"""Edge cases of the quantization ops a user may hit: extreme magnitudes, degenerate shapes, argument types."""
import pytest
import torch

from tests.conftest import backend_params
from vqfast import ops
from vqfast.reference import nearest_code as ref

BACKENDS = backend_params("reference", "cpu", "triton")


def _assert_oracle(x, codebook, metric, idx, dist):
    """Indices equal the reference where its best code wins by a clear margin; the chosen code's
    distance equals the reference's best distance everywhere."""
    d_all = ref.code_distances(x.reshape(-1, x.shape[-1]), codebook, metric)
    two = d_all.topk(min(2, d_all.shape[1]), dim=1, largest=False).values
    best = two[:, 0]
    clear = (two[:, -1] - best) > 1e-5 * best.abs().clamp_min(1e-30) if two.shape[1] > 1 else torch.ones_like(best, dtype=torch.bool)
    ridx, rdist = ref.nearest_code(x, codebook, metric)
    assert torch.equal(idx.reshape(-1)[clear], ridx.reshape(-1)[clear])
    chosen = d_all.gather(1, idx.reshape(-1, 1)).squeeze(1)
    torch.testing.assert_close(chosen, best, rtol=1e-5, atol=0)
    torch.testing.assert_close(dist, rdist, rtol=1e-4, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("scale", [1e-20, 1e6, 5e18, 1e19, 1e30])
def test_nearest_code_extreme_magnitudes(backend, metric, scale):
    """x and codebook scaled alike: squared norms past fp32's range must not change the answer."""
    g = torch.Generator().manual_seed(7)
    x, cb = torch.randn(64, 16, generator=g) * scale, torch.randn(300, 16, generator=g) * scale
    idx, dist = ops.nearest_code(x, cb, metric=metric, backend=backend)
    _assert_oracle(x, cb, metric, idx, dist)
    q = ops.quantize(x, cb, metric=metric, backend=backend)
    assert torch.equal(q.indices, idx)
    assert torch.equal(q.z_q, cb[idx])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("scale, dtype", [(1e19, torch.float32), (1e30, torch.bfloat16), (1e-25, torch.float32)])
def test_dual_and_residual_extreme_magnitudes(backend, metric, scale, dtype):
    if metric == "cosine" and scale < 1e-12:
        pytest.skip("below the normalization eps 1e-12 every reference cosine distance rounds to 1: all tie")
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(50, 12, generator=g) * scale).to(dtype)
    e, e2 = (torch.randn(40, 12, generator=g) * scale).to(dtype), (torch.randn(30, 12, generator=g) * scale).to(dtype)
    visible = torch.rand(50, generator=g) > 0.5
    out = ops.dual_codebook_quantize(x, visible, e, e2, metric=metric, backend=backend)
    # each side searched alone must agree with the reference's search of that side
    i_v, _ = ops.nearest_code(x, e, metric=metric, backend="reference")
    i_m, _ = ops.nearest_code(x, e2, metric=metric, backend="reference")
    assert torch.equal(out.indices, torch.where(visible, i_v, i_m + e.shape[0]))
    if dtype == torch.float32:  # residuals of bf16 inputs are fp32: the reference's first level only
        cb = torch.randn(2, 40, 12, generator=g) * scale
        res = ops.residual_quantize(x, cb, metric=metric, backend=backend)
        ref_res = ops.residual_quantize(x, cb, metric=metric, backend="reference")
        assert torch.equal(res.indices, ref_res.indices)


@pytest.mark.parametrize("call", [
    lambda x, cb: ops.nearest_code(x, cb),
    lambda x, cb: ops.quantize(x, cb),
    lambda x, cb: ops.residual_quantize(x, cb, 2),
    lambda x, cb: ops.dual_codebook_quantize(x, torch.ones(x.shape[:-1], dtype=torch.bool), cb, cb),
])
def test_zero_width_codes_raise_value_error(call):
    with pytest.raises(ValueError, match="d=0"):
        call(torch.randn(4, 0), torch.randn(5, 0))


def test_residual_depth_accepts_integer_likes_only():
    import numpy as np

    x, cb = torch.randn(3, 4), torch.randn(5, 4)
    ref_idx = ops.residual_quantize(x, cb, 2).indices
    assert torch.equal(ops.residual_quantize(x, cb, np.int64(2)).indices, ref_idx)
    assert torch.equal(ops.residual_quantize(x, cb, torch.tensor(2)).indices, ref_idx)
    for bad in (2.0, True, torch.tensor(2.0), "2"):
        with pytest.raises(TypeError, match="depth must be an int"):
            ops.residual_quantize(x, cb, bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_results_identical_across_thread_counts(dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1001, 33, generator=g).to(dtype)
    cb = torch.randn(300, 33, generator=g).to(dtype)
    cb = torch.cat([cb, cb[:50]])  # duplicate codes: ties
    visible = torch.rand(1001, generator=g) > 0.3
    levels = torch.randn(4, 300, 33, generator=g).to(dtype).requires_grad_()

    def run():
        out = []
        for metric in ("l2", "cosine"):
            out += list(ops.nearest_code(x, cb, metric=metric))
            out += list(ops.quantize(x, cb, metric=metric))
            d = ops.dual_codebook_quantize(x, visible, cb, cb[:77], metric=metric)
            out += [*d, d.commit_loss]
            r = ops.residual_quantize(x, levels, metric=metric)
            out += [*r, r.codebook_loss]
        return [t.detach() for t in out]

    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(run())
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", backend_params("reference", "cpu"))
def test_commit_loss_double_backward_matches_reference(backend):
    """A gradient penalty through the commitment loss (create_graph=True) as with mse_loss."""
    from vqfast.reference import dual_codebook as ref_dual

    g = torch.Generator().manual_seed(9)
    x0, cb = torch.randn(6, 5, generator=g), torch.randn(8, 5, generator=g)
    visible = torch.tensor([True, False, True, True, False, False])
    for run, oracle in (
        (lambda x: ops.quantize(x, cb, backend=backend).commit_loss, lambda x: ref.quantize(x, cb)[2]),
        (lambda x: ops.dual_codebook_quantize(x, visible, cb, cb[:3], backend=backend).commit_loss,
         lambda x: ref_dual.dual_codebook_quantize(x, visible, cb, cb[:3])[2]),
    ):
        grads = []
        for f in (run, oracle):
            x = (x0 * 3).requires_grad_()
            (gx,) = torch.autograd.grad(f(x), x, create_graph=True)
            gx.square().sum().backward()
            grads.append((gx.detach(), x.grad))
        torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_code_distance_of_near_matches(backend, dtype, metric):
    """Rows close to a code: dist within fp32 tolerances of the reference's, though it is
    small next to |x|^2 (the GEMM expansion |x|^2 - 2 x.c + |c|^2 loses it to cancellation)."""
    g = torch.Generator().manual_seed(11)
    cb = torch.randn(256, 64, generator=g).to(dtype)
    x = (cb[torch.randint(0, 256, (300,), generator=g)].float() + 0.01 * torch.randn(300, 64, generator=g)).to(dtype)
    idx, dist = ops.nearest_code(x, cb, metric=metric, backend=backend)
    ridx, rdist = ref.nearest_code(x, cb, metric)
    assert torch.equal(idx, ridx)
    torch.testing.assert_close(dist, rdist)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["quantize", "dual", "residual"])
def test_empty_batch_backward(backend, op):
    """N = 0 rows with grads: the losses are NaN (as mse_loss) and backward gives empty/zero grads."""
    x = torch.randn(2, 0, 8, requires_grad=True)
    cb = torch.randn(5, 8, requires_grad=True)
    if op == "quantize":
        out = ops.quantize(x, cb, backend=backend)
    elif op == "dual":
        out = ops.dual_codebook_quantize(x, torch.zeros(2, 0, dtype=torch.bool), cb, cb, backend=backend)
    else:
        out = ops.residual_quantize(x, cb, 2, backend=backend)
    assert out.z_q.shape == x.shape and out.commit_loss.isnan()
    (out.z_q.sum() + out.commit_loss + out.codebook_loss).backward()
    assert x.grad.shape == x.shape
    assert torch.equal(cb.grad, torch.zeros_like(cb))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_z_q_equals_the_reference_exactly_in_every_dtype(backend, dtype):
    """z_q's value is the code itself (sg(c) + x - sg(x)) in the ops and the references alike."""
    from vqfast.reference import dual_codebook as ref_dual
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(203, 19, generator=g) * 0.01).to(dtype).requires_grad_()
    cb, e2 = (torch.randn(k, 19, generator=g).to(dtype) for k in (37, 23))
    visible = torch.rand(203, generator=g) < 0.5
    z_q = ops.quantize(x, cb, backend=backend).z_q
    torch.testing.assert_close(z_q, ref.quantize(x, cb)[0], rtol=0, atol=0)
    out = ops.dual_codebook_quantize(x, visible, cb, e2, backend=backend)
    torch.testing.assert_close(out.z_q, ref_dual.dual_codebook_quantize(x, visible, cb, e2)[0], rtol=0, atol=0)
    z_q.float().sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x), rtol=0, atol=0)  # straight-through
