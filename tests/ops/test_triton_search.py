"""Triton search kernels (interpreter) on what the shared oracle tests leave out: x and
codebooks of different dtypes (each codebook layout of triton_kernels/_search.py) and
poisoned output buffers (every element must be written)."""
import pytest
import torch

import vqfast
from tests.conftest import available, poison
from tests.ops.test_nearest_code import DTYPES, check_indices

pytestmark = pytest.mark.skipif(not available("triton"), reason="triton backend not available")


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty hands out poisoned buffers, so an element a kernel skips fails the test."""
    real = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real(*a, **k)))


@pytest.mark.parametrize("cb_dtype", DTYPES)
@pytest.mark.parametrize("x_dtype", DTYPES)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_code_and_quantize_mixed_dtypes(x_dtype, cb_dtype, metric, poisoned_empty):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(70, 45, generator=g).to(x_dtype)
    cb = (3 * torch.randn(600, 45, generator=g)).to(cb_dtype)  # 600 codes: two code tiles
    idx, dist = vqfast.ops.nearest_code(x, cb, metric=metric, backend="triton")
    check_indices(x, cb, idx, dist, metric)
    out = vqfast.ops.quantize(x, cb, metric=metric, backend="triton")
    assert torch.equal(out.indices, idx)
    codes = cb[idx].to(x_dtype)  # gathered in the kernel, rounded like .to()
    assert torch.equal(out.z_q, codes)  # the value is exactly the codes


@pytest.mark.parametrize("e2_dtype", DTYPES)
@pytest.mark.parametrize("x_dtype", DTYPES)
def test_dual_codebook_mixed_dtypes(x_dtype, e2_dtype, poisoned_empty):
    g = torch.Generator().manual_seed(4)
    n, k = 300, 40  # two row blocks; visible rows in runs and scattered
    x = torch.randn(n, 24, generator=g).to(x_dtype)
    visible = (torch.arange(n) < 120) | (torch.rand(n, generator=g) < 0.3)
    e, e2 = torch.randn(k, 24, generator=g).to(x_dtype), torch.randn(33, 24, generator=g).to(e2_dtype)
    out = vqfast.ops.dual_codebook_quantize(x, visible, e, e2, backend="triton")
    ref = vqfast.ops.dual_codebook_quantize(x, visible, e, e2, backend="reference")
    assert torch.equal(out.indices, ref.indices)
    assert torch.equal(out.z_q, ref.z_q)


@pytest.mark.parametrize("x_dtype", DTYPES)
def test_residual_fp32_codebook_with_half_x(x_dtype, poisoned_empty):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 30, generator=g).to(x_dtype)
    cb = torch.randn(3, 50, 30, generator=g)
    out = vqfast.ops.residual_quantize(x, cb, backend="triton")
    ref = vqfast.ops.residual_quantize(x, cb, backend="reference")
    assert torch.equal(out.indices, ref.indices)
    assert torch.equal(out.z_q, ref.z_q)
