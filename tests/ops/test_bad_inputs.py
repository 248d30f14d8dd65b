"""Bad arguments raise clear ValueError/TypeError naming the argument, for every op."""
import pytest
import torch

import vqfast


@pytest.mark.parametrize("op", [vqfast.ops.nearest_code, vqfast.ops.quantize])
@pytest.mark.parametrize("x, codebook, match, err", [
    (torch.randn(4, 8), torch.randn(8), "codebook must have 2 dims", ValueError),
    (torch.randn(4, 8), torch.randn(5, 7), "x has d=8 but codebook has d=7", ValueError),
    (torch.randn(4, 8), torch.randn(0, 8), "codebook is empty", ValueError),
    (torch.randint(0, 5, (4, 8)), torch.randn(5, 8), "x must have dtype", TypeError),
    (torch.randn(4, 8), torch.randn(5, 8).double(), "codebook must have dtype", TypeError),
    (torch.tensor(1.0), torch.randn(5, 8), "x must have at least 1 dims", ValueError),
    ([1.0, 2.0], torch.randn(5, 2), "x must be a torch.Tensor", TypeError),
    (torch.randn(4, 8), torch.randn(5, 8, device="meta"), "one device", ValueError),
])
def test_bad_x_or_codebook(op, x, codebook, match, err):
    with pytest.raises(err, match=match):
        op(x, codebook)


def test_bad_metric_and_backend():
    x, cb = torch.randn(4, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match="metric must be one of"):
        vqfast.ops.nearest_code(x, cb, metric="l1")
    with pytest.raises(ValueError, match="backend must be one of"):
        vqfast.ops.nearest_code(x, cb, backend="gpu")
    with pytest.raises(vqfast.BackendUnavailableError):
        vqfast.ops.nearest_code(x, cb, backend="cuda")
