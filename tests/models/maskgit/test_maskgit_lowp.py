"""Low-precision inference of the transformers: the CPU bf16 matmul attention against an
fp64 oracle, `low_precision_copy` (bf16 blocks, fp32 stream, LayerNorms and head) against
fp32 and autocast, and the samplers' bf16 path (tests/models/test_inference_copy.py: the
packed copies and their cache)."""
import pytest
import torch
import torch.nn.functional as F

import vqfast.models.common.transformer as tf
from vqfast.models.put import UQTransformer, put_fill
from vqfast.models.common.inference import inference_copy, low_precision_copy
from vqfast.models.common.transformer import Block, attention, matmul_attention
from vqfast.models.maskgit.transformer import BidirectionalTransformer
from vqfast.models.maskgit.sampler import maskgit_decode


def _qkv(B, L, H, Dh, dtype, seed=0):
    """q, k, v [B, H, L, Dh] as the permuted (non-contiguous) views SelfAttention makes."""
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(B, L, 3, H, Dh, generator=g) * 1.5).to(dtype)
    return qkv.permute(2, 0, 3, 1, 4)


@pytest.mark.parametrize("B, H, L, Dh", [pytest.param(1, 1, 1, 8, id="one"), pytest.param(2, 3, 37, 24, id="odd"),
                                         pytest.param(1, 4, 64, 16, id="square")])
@pytest.mark.parametrize("chunk", [1 << 21, 100, 1], ids=["one-chunk", "row-blocks", "per-row"])
def test_matmul_attention_matches_oracle(B, H, L, Dh, chunk, monkeypatch):
    monkeypatch.setattr(tf, "_SCORE_CHUNK", chunk)
    q, k, v = _qkv(B, L, H, Dh, torch.float32)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(matmul_attention(q, k, v), ref.float(), atol=1e-5, rtol=1e-5)
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    ref_b = F.scaled_dot_product_attention(qb.double(), kb.double(), vb.double())  # same rounded inputs
    torch_err = (F.scaled_dot_product_attention(qb, kb, vb).double() - ref_b).abs().max()
    out = matmul_attention(qb, kb, vb)
    assert out.dtype == torch.bfloat16 and out.shape == (B, H, L, Dh)
    # bf16 scores and probabilities: a few times SDPA's bf16 error (which keeps them in fp32)
    assert (out.double() - ref_b).abs().max() <= 4 * torch_err + 2e-2


def test_attention_dispatch():
    q, k, v = _qkv(2, 19, 2, 8, torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(attention(q, k, v), matmul_attention(q, k, v))  # CPU bf16 inference
    qg = q.clone().requires_grad_()
    out = attention(qg, k, v)  # autograd: SDPA (no [L, L] scores kept), in fp32 below 256 keys on the CPU
    assert torch.equal(out, F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16())
    out.float().sum().backward()
    assert qg.grad is not None and qg.grad.shape == q.shape
    q32, k32, v32 = (t.float() for t in (q, k, v))
    assert torch.equal(attention(q32, k32, v32), F.scaled_dot_product_attention(q32, k32, v32))


def _rms(a, b):
    return float((a.float() - b.float()).pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return BidirectionalTransformer(64, 30, dim=96, depth=3, heads=4, num_classes=5).eval()


def test_low_precision_copy_logits_close_to_fp32(net):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(65, (3, 30), generator=g)
    labels = torch.tensor([0, 4, 5])
    fast = low_precision_copy(net)
    with torch.no_grad():
        ref, out = net(tokens, labels), fast(tokens, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = net(tokens, labels)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # Stated tolerance: rms error <= 2% of the logits' spread, and no worse than autocast's
    assert _rms(out, ref) <= 0.02 * float(ref.std())
    assert _rms(out, ref) <= 1.5 * _rms(amp, ref) + 1e-4
    # same API and attributes; the original keeps its fp32 weights, LayerNorms/head are shared
    assert (fast.mask_id, fast.seq_len, fast.num_classes) == (net.mask_id, net.seq_len, net.num_classes)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert fast.head.weight is net.head.weight and fast.blocks[0].norm1.weight is net.blocks[0].norm1.weight
    assert fast.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert fast.blocks[-1].mlp[2].bias.dtype == torch.bfloat16


def test_uq_transformer_low_precision_copy():
    torch.manual_seed(0)
    t = UQTransformer.from_preset("tiny", depth=3, dim=64).eval()
    feats = torch.randn(2, 50, 64, generator=torch.Generator().manual_seed(2)).relu()
    with torch.no_grad():
        ref, out = t(feats), low_precision_copy(t)(feats)
    assert out.dtype == torch.float32 and out.shape == (2, 50, 128)
    assert _rms(out, ref) <= 0.02 * float(ref.std())


def test_low_precision_copy_rejects_other_models():
    with pytest.raises(TypeError, match="Block"):
        low_precision_copy(torch.nn.Linear(3, 3))


def test_full_bf16_model_still_runs(net):
    blk = Block(32, 4).to(torch.bfloat16)
    x = torch.randn(2, 5, 32).to(torch.bfloat16)
    with torch.no_grad():
        assert blk(x).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_maskgit_decode_runs_the_inference_copy(net, dtype):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(64, (4, 30), generator=g)
    mask = torch.rand(4, 30, generator=g) < 0.6
    kw = dict(steps=4, generator=5, class_labels=torch.tensor([1, 2, 3, 0]), guidance_scale=2.0)
    out = maskgit_decode(net, tokens, mask, autocast_dtype=dtype, **kw).tokens
    fast = inference_copy(net, dtype, batch_hint=4 * 30 * 2)  # the sampler's rows: B * L, twice (guidance)
    assert torch.equal(out, maskgit_decode(fast, tokens, mask, **kw).tokens)
    assert torch.equal(out[~mask], tokens[~mask])


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_put_fill_runs_the_inference_copy(dtype):
    torch.manual_seed(0)
    t = UQTransformer.from_preset("tiny", depth=2, dim=64).eval()
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(2, 64, 64, generator=g)
    tokens = torch.randint(128, (2, 64), generator=g)
    known = torch.rand(2, 64, generator=g) < 0.5
    codebook = torch.randn(128, 64, generator=g)

    def codes(i):
        return F.embedding(i, codebook)

    out = put_fill(t, codes, feats, tokens, ~known, top_k=5, generator=1, autocast_dtype=dtype)
    ref = put_fill(inference_copy(t, dtype, batch_hint=2 * 64), codes, feats, tokens, ~known, top_k=5, generator=1)
    assert torch.equal(out.tokens, ref.tokens) and torch.equal(out.order, ref.order)
    assert not bool(out.mask.any())
