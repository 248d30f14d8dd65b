"""The benchmarks' machine ceilings (csrc/cpu/ceilings.cpp) compute what they claim to time."""
import pytest
import torch

from tests.conftest import available

pytestmark = pytest.mark.skipif(not available("cpu"), reason="cpu backend not available")


@pytest.mark.parametrize("N, V", [(1, 1), (3, 15), (5, 16), (4, 1025), (2, 16384)])
def test_exp_sum_ceiling_sums_exp_of_minus_abs(N, V):
    x = 4 * torch.randn(N, V, generator=torch.Generator().manual_seed(V), dtype=torch.float64)
    x[0, 0] = -torch.inf  # e^-inf = 0
    got = torch.ops.vqfast_bench.exp_sum_ceiling(x.float())
    want = torch.exp(-x.abs()).sum(-1)
    assert got.dtype == torch.float32 and got.shape == (N,)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_exp_sum_ceiling_rejects_other_layouts():
    with pytest.raises(RuntimeError, match="contiguous fp32"):
        torch.ops.vqfast_bench.exp_sum_ceiling(torch.randn(4, 6).t())
    with pytest.raises(RuntimeError, match="contiguous fp32"):
        torch.ops.vqfast_bench.exp_sum_ceiling(torch.randn(4, 6, dtype=torch.float64))
