"""Activations stay in the network's memory format: NCHW models see only NCHW tensors in their
convolutions and GroupNorms, channels-last models (weights and images NHWC) only NHWC ones, and
both formats give the same result. A quantizer output or an attention output reshaped into
[B, C, H, W] used to carry NHWC strides into NCHW decoders (GroupNorm's slow path)."""
import pytest
import torch
import torch.nn as nn

from vqfast.layout import is_channels_last, same_format
from vqfast.models.common.vqgan import VQGAN
from vqfast.models.mqvae import MQVAE
from vqfast.models.put import PVQVAE
from vqfast.models.rq import RQVAE
from vqfast.models.vqddm import VQDDM
from vqfast.quantizers import DualCodebookQuantizer, ResidualQuantizer, VectorQuantizer

CL = torch.channels_last


def test_same_format_follows_the_reference_tensor():
    t = torch.randn(2, 8, 5, 3)
    assert same_format(t, torch.randn(2, 8, 5, 3)) is t
    assert same_format(t, None) is t
    nhwc = same_format(t, torch.randn(4, 8, 3, 3).contiguous(memory_format=CL))
    assert is_channels_last(nhwc) and torch.equal(nhwc, t)
    back = same_format(nhwc, torch.randn(4, 8, 3, 3))
    assert back.is_contiguous() and torch.equal(back, t)
    # a [B, C, 1, 1] tensor is both formats at once: it counts as NCHW
    assert not is_channels_last(torch.randn(2, 8, 1, 1).contiguous(memory_format=CL))
    assert same_format(torch.randn(3, 4), nhwc).is_contiguous()


def _quantizers():
    g = torch.Generator().manual_seed(0)
    vq = VectorQuantizer(8, 16, channel_first=True)
    dual = DualCodebookQuantizer(8, 16, 16, channel_first=True)
    rq = ResidualQuantizer(8, 16, depth=3, channel_first=True)
    for q in (vq, dual, rq):
        with torch.no_grad():
            for p in q.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
    return {"vector": (vq, ()), "dual": (dual, ("visible",)), "residual": (rq, ())}


@pytest.mark.parametrize("name", ["vector", "dual", "residual"])
def test_quantizer_output_keeps_the_input_format(name):
    q, extra = _quantizers()[name]
    q.eval()
    x = torch.randn(2, 8, 5, 6, generator=torch.Generator().manual_seed(1))
    args = [torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(2)) > 0.5] if extra else []
    z, idx, _ = q(x, *args)
    z_cl, idx_cl, _ = q(x.contiguous(memory_format=CL), *args)
    assert z.is_contiguous() and is_channels_last(z_cl)
    assert torch.equal(idx, idx_cl) and torch.equal(z, z_cl)
    assert q.indices_to_codes(idx).is_contiguous()


def _tokenizers():
    put = PVQVAE.from_preset("tiny")
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, 8:24, 8:24] = True
    return {"vqgan": (VQGAN.from_preset("tiny"), ()), "put": (put, (mask,)), "mqvae": (MQVAE.from_preset("tiny"), ()),
            "rq": (RQVAE.from_preset("tiny"), ())}


def _record_formats(model: nn.Module) -> tuple[list, list]:
    seen, handles = [], []

    def hook(mod, inp):
        x = inp[0]
        if x.dim() == 4 and x.shape[-1] * x.shape[-2] > 1:
            seen.append((type(mod).__name__, "nhwc" if is_channels_last(x) else "nchw" if x.is_contiguous() else "other"))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.GroupNorm)):
            handles.append(m.register_forward_pre_hook(hook))
    return seen, handles


@pytest.mark.parametrize("name", ["vqgan", "put", "mqvae", "rq"])
def test_tokenizer_layers_see_one_format(name):
    torch.manual_seed(0)
    tok, extra = _tokenizers()[name]
    tok.eval()
    r = tok.config["resolution"]
    x = torch.rand(2, 3, r, r, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen, handles = _record_formats(tok)
    with torch.no_grad():
        ref = tok(x, *extra).reconstruction
    assert seen and {f for _, f in seen} == {"nchw"}, sorted(set(seen))
    seen.clear()
    tok.to(memory_format=CL)
    with torch.no_grad():
        out = tok(x.contiguous(memory_format=CL), *extra).reconstruction
    for h in handles:
        h.remove()
    assert {f for _, f in seen} == {"nhwc"}, sorted(set(seen))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_vqddm_unet_sees_nchw_from_its_token_embedding():
    model = VQDDM.from_preset("tiny")
    assert model.backbone_name == "unet"
    h, w = model.token_hw
    codes = torch.randint(0, model.config["codebook_size"], (2, h, w), generator=torch.Generator().manual_seed(0))
    seen, handles = _record_formats(model)
    model.loss(codes, generator=0)
    for hd in handles:
        hd.remove()
    assert seen and {f for _, f in seen} == {"nchw"}, sorted(set(seen))
