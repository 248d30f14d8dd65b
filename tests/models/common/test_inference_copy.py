"""vqfast.models.common.inference: packed copies (oneDNN block weights, fp32 and bf16) against the
model they copy, what they share, the cache and its invalidation and the fallbacks
(tests/models/test_maskgit_lowp.py: the samplers run them)."""
import pytest
import torch

import vqfast.models.common.inference as inf
from vqfast.models.common.inference import PackedLinear, can_pack, inference_copy, low_precision, packed_copy
from vqfast.models.put import UQTransformer
from vqfast.models.mqvae.stackformer import Stackformer
from vqfast.models.maskgit.transformer import BidirectionalTransformer

needs_pack = pytest.mark.skipif(not can_pack(torch.nn.Linear(2, 2), torch.float32), reason="no oneDNN on this torch")


def _maskgit(seed=0):
    torch.manual_seed(seed)
    return BidirectionalTransformer(64, 30, dim=96, depth=3, heads=4, num_classes=5).eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(65, (3, 30), generator=g), torch.tensor([0, 4, 5])


@needs_pack
@pytest.mark.parametrize("batch_hint", [1, 90, 1000])
def test_fp32_packed_copy_equals_model_up_to_gemm_rounding(batch_hint):
    net = _maskgit()
    tokens, labels = _inputs()
    fast = packed_copy(net, torch.float32, batch_hint)
    with torch.no_grad():
        ref, out, ref64 = net(tokens, labels), fast(tokens, labels), net.double()(tokens, labels)
    net.float()
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # fp32 GEMMs in another summation order: the error to fp64 is of the same size as the model's
    err, ref_err = (out.double() - ref64).abs().max(), (ref.double() - ref64).abs().max()
    assert err <= 4 * ref_err + 1e-6 * ref64.abs().max()
    n_packed = sum(isinstance(m, PackedLinear) for m in fast.modules())
    assert n_packed == 4 * len(net.blocks)  # qkv, proj and the two MLP Linears of every Block
    assert fast.head.weight is net.head.weight and fast.blocks[1].norm2.weight is net.blocks[1].norm2.weight
    assert isinstance(net.blocks[0].attn.qkv, torch.nn.Linear)  # the model itself is untouched


@needs_pack
def test_bf16_packed_copy_close_to_fp32():
    if not can_pack(torch.nn.Linear(2, 2), torch.bfloat16):
        pytest.skip("no bf16 oneDNN on this CPU")
    torch.manual_seed(0)
    t = UQTransformer.from_preset("tiny", depth=3, dim=64).eval()
    feats = torch.randn(2, 50, 64, generator=torch.Generator().manual_seed(2)).relu()
    fast = packed_copy(t, torch.bfloat16, 100)
    with torch.no_grad():
        ref, out, ref64 = t(feats), fast(feats), t.double()(feats.double())
    t.float()
    assert out.dtype == torch.float32  # fp32 head
    rms = float((out.double() - ref64).pow(2).mean().sqrt())
    # stated tolerance: rms error <= 2% of the logits' spread; above fp32's (bf16 really ran)
    assert rms <= 0.02 * float(ref64.std())
    assert rms > float((ref.double() - ref64).pow(2).mean().sqrt())


@needs_pack
def test_cache_follows_parameters_mode_dtype_and_hint():
    net = _maskgit()
    tokens, labels = _inputs()
    a = inference_copy(net, None, 90)
    assert inference_copy(net, torch.float32, 90) is a  # None means fp32
    assert inference_copy(net, None, 91) is not a
    b = inference_copy(net, None, 90)
    with torch.no_grad():
        net.blocks[0].attn.qkv.weight.mul_(2.0)  # in-place update (optimizer step)
        c = inference_copy(net, None, 90)
        assert c is not b
        torch.testing.assert_close(c(tokens, labels), net(tokens, labels), atol=1e-4, rtol=1e-4)
    assert inference_copy(net, torch.float16) is not c  # no packed fp16: the cast-weight copy
    net.train()
    assert inference_copy(net, None, 90).training


def test_fallbacks_without_packing(monkeypatch):
    net = _maskgit()
    monkeypatch.setattr(inf, "can_pack", lambda model, dtype: False)
    assert inference_copy(net, None) is net and inference_copy(net, torch.float32) is net
    low = inference_copy(net, torch.bfloat16)
    assert isinstance(low.blocks[0].attn.qkv, torch.nn.Linear) and low.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert low.head.weight is net.head.weight


def test_low_precision_of_other_callables_and_bad_models():
    def fn(x):
        return x

    assert low_precision(fn, torch.bfloat16) == (fn, torch.bfloat16)
    assert low_precision(fn, torch.float32) == (fn, None) and low_precision(fn, None) == (fn, None)
    with pytest.raises(TypeError, match="Block"):
        packed_copy(torch.nn.Linear(3, 3))
    assert not can_pack(torch.nn.Linear(3, 3).to("meta"), torch.float32)
    assert not can_pack(torch.nn.Linear(3, 3), torch.float16)


@needs_pack
def test_stackformer_fp32_copy_packs_code_and_position_blocks():
    torch.manual_seed(0)
    m = Stackformer.from_preset("tiny").eval()
    fast = inference_copy(m, None, 2)
    blocks = len(m.code_blocks) + len(m.position_blocks)
    assert sum(isinstance(x, PackedLinear) for x in fast.modules()) == 4 * blocks



@needs_pack
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_copy_under_an_enclosing_autocast(dtype):
    if not can_pack(torch.nn.Linear(2, 2), dtype):
        pytest.skip("no packing for this dtype here")
    net = _maskgit()
    tokens, labels = _inputs()
    fast = packed_copy(net, dtype, 90)
    with torch.no_grad():
        plain = fast(tokens, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 activations reach fp32 packed weights
            amp = fast(tokens, labels)
    assert amp.shape == plain.shape and bool(torch.isfinite(amp).all())
    assert float((amp.float() - plain).abs().max()) <= 0.05 * float(plain.abs().max())
