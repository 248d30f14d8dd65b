"""CrossmodalGroup/MaskedVectorQuantization MQ-VAE -> vqfast MQVAE. The side-by-side parity test
runs the official modules and is opt-in: set VQFAST_MQVAE_REPO to a local checkout of the official
repository. The conversion itself (key map, padding row, skipped training-only tensors, the CLI)
runs everywhere on a synthetic state dict of the official layout made from a vqfast model."""
import importlib
import os
import sys

import pytest
import torch
from torch import nn

from vqfast import checkpoint
from vqfast.__main__ import main
from vqfast.convert import convert
from vqfast.convert.mqvae import key_map
from vqfast.models.mqvae import MQVAE

REPO = os.environ.get("VQFAST_MQVAE_REPO")
# the released f8 layout at a small width: 64px -> 8x8 grid, attention at the 8x8 level (32 at 256px)
R, CH, MULT, Z, K, D, LAYERS, RATIO = 64, 32, [1, 1, 2, 2], 64, 64, 32, 2, 0.25


def official_modules():
    """The official encoder, decoder, masker, de-masker and quantizer, composed as the official
    MaskedVectorQuantizationModel holds them (same state dict keys)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)  # the official modules import each other as `modules.*`
    mod = lambda name: importlib.import_module(f"modules.{name}")  # noqa: E731
    net = nn.Module()
    net.encoder = mod("diffusionmodules.model").Encoder(
        double_z=False, z_channels=Z, resolution=R, in_channels=3, out_ch=3, ch=CH, ch_mult=MULT, num_res_blocks=1,
        attn_resolutions=[8], dropout=0.0)
    net.decoder = mod("masked_quantization.decoder").Decoder(
        ch=CH, in_ch=Z, out_ch=3, ch_mult=MULT, num_res_blocks=1, resolution=R, attn_resolutions=[8])
    net.masker = mod("masked_quantization.masker_vanilla_refine").VanillaMasker(
        topk_ratio=RATIO, input_token_num=64, input_dim=Z, patch_size=8, codebook_dim=D)
    net.demasker = mod("masked_quantization.demasker_vanilla").VanillaDemasker(
        codebook_dim=D, output_dim=Z, height_and_width=8, n_layer=LAYERS, mask_init_value=0.02)
    net.quantize = mod("vector_quantization.quantize2").VectorQuantize2(
        codebook_size=K, codebook_dim=D, accept_image_fmap=False, channel_last=False)
    return net


def official_forward(net, x):
    """tokens [B, k] (sorted by position), positions [B, k] ascending, reconstruction: the official
    model's `encode` then `decode`."""
    m = net.masker(net.encoder(x))
    quant, _, (_, _, codes) = net.quantize(m["sample_features"])
    rec = net.decoder(net.demasker(quant, None, m["sample_index"], m["remain_index"], m["squeezed_mask"]))
    positions, order = m["sample_index"].sort(dim=1)
    return codes.gather(1, order), positions, rec


@pytest.mark.skipif(not REPO, reason="set VQFAST_MQVAE_REPO to a checkout of CrossmodalGroup/MaskedVectorQuantization")
def test_converted_mqvae_matches_the_official_modules(tmp_path):
    torch.manual_seed(0)
    net = official_modules().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        bn = net.masker.score_pred_net[4]
        bn.running_mean.fill_(0.1)
        bn.running_var.fill_(0.5)
        net.quantize.codebook.weight[:-1] = torch.randn(K, D) * 0.5  # codes on the features' scale
    state = {k: v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "stage1.ckpt")
    result = convert("mqvae", tmp_path / "stage1.ckpt", tmp_path / "mq", resolution=R, ratio=RATIO)
    assert result.mapped == len(result.model.state_dict())
    assert result.skipped and all(".temb_proj." in k for k in result.skipped)
    mq = checkpoint.load(tmp_path / "mq", expected=MQVAE).eval()
    x = torch.rand(3, 3, R, R, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref_tokens, ref_positions, ref_rec = official_forward(net, x)
        tokens, positions, _ = mq.encode(x)
        rec = mq.decode_tokens(tokens, positions)
    assert torch.equal(positions, ref_positions) and torch.equal(tokens, ref_tokens)
    assert tokens.unique().numel() > 4  # the check compares varied codes, not one repeated code
    rel = float((rec - ref_rec).abs().max() / ref_rec.abs().max())
    print(f"MQ-VAE: tokens equal; max |rec - official| / max |official| = {rel:.3g}")
    assert rel < 1e-5


def official_layout_state(mq: MQVAE) -> dict:
    """The official state dict of a vqfast MQVAE (inverse of the converter's key map), plus the
    de-mask ResBlocks' unused time-embedding layers and a training-loss tensor."""
    own = mq.state_dict()
    state = {}
    for mine, theirs in key_map(mq).items():
        if isinstance(theirs, str):
            state[theirs] = own[mine]
        elif mine.endswith("qkv.weight") or mine.endswith("qkv.bias"):
            for key, part in zip(theirs[1], own[mine].chunk(3)):
                state[key] = part
    d = mq.config["embed_dim"]
    state["quantize.codebook.weight"] = torch.cat([own["quantizer.codebook_state.embed"], torch.zeros(1, d)])
    state["demasker.mask_token"] = own["demasker.mask_token"].reshape(1, d, 1)
    z = mq.config["z_channels"]
    state["demasker.transformer.last_resblock.temb_proj.weight"] = torch.zeros(z, 512)
    state["loss.discriminator.main.0.weight"] = torch.zeros(1)
    return state


def _official_tiny() -> MQVAE:
    torch.manual_seed(0)
    return MQVAE.from_preset("tiny", attn_resolutions=[8], decoder_stem=False, ch_mult=[1, 2, 2],
                             threshold_dead_code=None, kmeans_init=False).eval()


def test_round_trip_through_the_official_layout(tmp_path, capsys):
    mq = _official_tiny()
    with torch.no_grad():
        mq.quantizer.codebook_state.embed.normal_()
    torch.save({"state_dict": official_layout_state(mq)}, tmp_path / "official.ckpt")
    main(["convert", "mqvae", str(tmp_path / "official.ckpt"), str(tmp_path / "mq"), "--resolution", "32",
          "--ratio", "0.5"])
    assert "mqvae: mapped" in capsys.readouterr().out
    back = checkpoint.load(tmp_path / "mq", expected=MQVAE).eval()
    assert back.config["decoder_stem"] is False and back.config["attn_resolutions"] == [8]
    for k, v in mq.state_dict().items():
        if not k.endswith("initted"):
            assert torch.equal(back.state_dict()[k], v), k
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    enc = mq.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(back.encode(x), enc))
    torch.testing.assert_close(back.decode_tokens(enc.tokens, enc.positions), mq.decode_tokens(*enc[:2]),
                               rtol=0, atol=0)


def test_missing_and_unknown_keys_are_listed(tmp_path):
    state = official_layout_state(_official_tiny())
    state.pop("masker.score_pred_net.1.bias")
    state["masker.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"missing \['masker.score_pred_net.1.bias'\].*unknown keys \['masker.extra"):
        convert("mqvae", tmp_path / "x.pt", tmp_path / "o", resolution=32, ratio=0.5)


def test_not_an_mqvae_state_dict(tmp_path):
    torch.save({"encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an MQ-VAE state dict"):
        convert("mqvae", tmp_path / "x.pt", tmp_path / "o")


def test_released_layout_converts_to_the_f8_official_preset():
    """The f8_r30 release's shapes (meta tensors, no weights) give exactly the "f8_official" config."""
    from vqfast.convert.mqvae import infer_config
    with torch.device("meta"):
        preset = MQVAE.from_preset("f8_official")
        state = official_layout_state(preset)
        converted = MQVAE(**infer_config(state, 256, 0.30))
    assert converted.config == preset.config
    attn = [k for k in state if k.endswith(".q.weight") and not k.startswith("demasker.")]
    # attention at 32x32: after the encoder's 2 ResBlocks, its middle block, the decoder's 3 ResBlocks
    assert len(attn) == 2 + 1 + 3 and sum(k.startswith("encoder.mid.") for k in attn) == 1
