"""taming-transformers' VectorQuantizer2 patched vs unpatched (see embedding_quantizer_cases)."""
import pytest
import torch

import vqfast.integrations as vi
from tests.integrations import embedding_quantizer_cases as cases

quantize = pytest.importorskip("taming.modules.vqvae.quantize")
NAME = "taming.VectorQuantizer2.forward"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "fixed_beta"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_vector_quantizer2_parity(dtype, legacy, train):
    cases.check_parity(quantize.VectorQuantizer2, vi.apply_to_taming, NAME, dtype, legacy, train)


def test_index_options(tmp_path):
    cases.check_index_options(quantize.VectorQuantizer2, vi.apply_to_taming, tmp_path)


def test_gumbel_interface_arguments_pass_through():
    vq = quantize.VectorQuantizer2(cases.K, cases.C, 0.25)
    vi.reset_stats()
    with vi.apply_to_taming(), pytest.raises(AssertionError, match="Gumbel"):
        vq(torch.randn(1, cases.C, 2, 2), temp=0.5)  # the peer's own assertion
    assert vi.stats()[NAME] == {"served": 0, "passed_through": 1}


def test_readme_usage_under_patch():
    """taming's VQGAN quantize step on an encoder map: z -> (z_q, loss, indices), then the
    codebook entries by index, as its sampling scripts do."""
    vq = quantize.VectorQuantizer2(n_e=1024, e_dim=16, beta=0.25, legacy=False)
    z = torch.randn(2, 16, 8, 8)
    with vi.apply_to_taming() as handle:
        z_q, loss, (_, _, indices) = vq(z)
    assert handle.patched == []
    back = vq.get_codebook_entry(indices, (2, 8, 8, 16))
    torch.testing.assert_close(back, z_q, rtol=1e-5, atol=1e-6)
    assert loss.ndim == 0
