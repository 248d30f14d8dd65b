"""`sdpa`: short bf16 CPU attention under autograd runs in fp32 (torch's bf16 CPU flash-attention
backward is slower there) and must equal the fp32 computation rounded to bf16, values and
gradients; long sequences, fp32 and no-grad calls take torch's kernel unchanged."""
import pytest
import torch
import torch.nn.functional as F

from vqfast.models.common.transformer import _CPU_BF16_FLASH_FROM, sdpa


def qkv(L, dtype, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, L, 8, generator=g).to(dtype).requires_grad_(grad) for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_short_bf16_attention_is_the_fp32_attention_rounded(causal, autocast):
    q, k, v = qkv(17, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = sdpa(q, k, v, is_causal=causal)
    assert out.dtype == torch.bfloat16
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, is_causal=causal)
    assert torch.equal(out, ref.to(torch.bfloat16))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out.backward(g)
    ref.backward(g.float())
    for t, r in zip((q, k, v), ref_in):
        assert torch.equal(t.grad, r.grad.to(torch.bfloat16))


def test_fp32_inputs_under_bf16_autocast_take_the_fp32_path_too():
    q, k, v = qkv(9, torch.float32)
    mask = torch.rand(9, 9, generator=torch.Generator().manual_seed(2)) > 0.3
    mask[:, 0] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sdpa(q, k, v, attn_mask=mask)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask).to(torch.bfloat16))


@pytest.mark.parametrize("case", ["long", "no_grad", "fp32"])
def test_other_calls_are_torchs_kernel(case):
    L = _CPU_BF16_FLASH_FROM if case == "long" else 17
    q, k, v = qkv(L, torch.float32 if case == "fp32" else torch.bfloat16, grad=case != "no_grad")
    assert torch.equal(sdpa(q, k, v), F.scaled_dot_product_attention(q, k, v))
