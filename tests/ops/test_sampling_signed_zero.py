"""-0.0 and +0.0 compare equal, so they tie (broken by id, as in the reference) in the
top-k / top-p filters and PUT's top-K: the kernels' integer order keys must not split them."""
import pytest
import torch

import vqfast
from vqfast.ops.sampling import HAS
from tests.conftest import backend_params


def _signed_zero_rows(B, L, V, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(B, L, V)
    x[torch.rand(x.shape, generator=g) < 0.5] = -0.0
    x[..., ::7] = 1.0  # a few larger ties too
    return x


@pytest.mark.parametrize("backend", backend_params(*HAS))
@pytest.mark.parametrize("kw", [{"top_k": 50}, {"top_p": 0.3}, {"top_k": 40, "top_p": 0.5}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_logits_signed_zeros_tie(backend, kw, dtype):
    L = 2 if backend == "triton" else 16
    x = _signed_zero_rows(2, L, 100, 0).to(dtype)
    assert torch.signbit(x).any()
    got = vqfast.ops.sample_logits(x, 1.0, seed=3, backend=backend, **kw)
    assert torch.equal(got, vqfast.ops.sample_logits(x, 1.0, seed=3, backend="reference", **kw))


@pytest.mark.parametrize("backend", backend_params(*HAS))
def test_select_and_sample_topk_signed_zeros_tie(backend):
    L = 2 if backend == "triton" else 16
    x = _signed_zero_rows(2, L, 100, 1)
    known = torch.zeros(2, L, dtype=torch.bool)
    got = vqfast.ops.select_and_sample_topk(x, known, 5, 2, seed=4, backend=backend)
    want = vqfast.ops.select_and_sample_topk(x, known, 5, 2, seed=4, backend="reference")
    assert all(torch.equal(a, b) for a, b in zip(got, want))
