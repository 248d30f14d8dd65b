"""Edge cases of the quantization ops a user may hit: extreme magnitudes, degenerate shapes, argument types."""
import pytest
import torch

from tests.conftest import backend_params
from vqfast import ops
from vqfast.reference import nearest_code as ref

BACKENDS = backend_params("reference", "cpu", "triton")


def _assert_oracle(x, codebook, metric, idx, dist):
    """Indices equal the reference where its best code wins by a clear margin; the chosen code's
    distance equals the reference's best distance everywhere (DESIGN.md op 1)."""
    d_all = ref.code_distances(x.reshape(-1, x.shape[-1]), codebook, metric)
    two = d_all.topk(min(2, d_all.shape[1]), dim=1, largest=False).values
    best = two[:, 0]
    clear = (two[:, -1] - best) > 1e-5 * best.abs().clamp_min(1e-30) if two.shape[1] > 1 else torch.ones_like(best, dtype=torch.bool)
    ridx, rdist = ref.nearest_code(x, codebook, metric)
    assert torch.equal(idx.reshape(-1)[clear], ridx.reshape(-1)[clear])
    chosen = d_all.gather(1, idx.reshape(-1, 1)).squeeze(1)
    torch.testing.assert_close(chosen, best, rtol=1e-5, atol=0)
    torch.testing.assert_close(dist, rdist, rtol=1e-4, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", backend_params("reference", "cpu"))
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
