"""liuqk3/PUT (CVPR'22) P-VQVAE + UQ-Transformer -> vqfast's PUT in the "cvpr2022" layout.

The side-by-side parity test runs the official modules and is opt-in: set VQFAST_PUT_REPO to a
local checkout of the official repository (its training losses, which need torchvision, are
stubbed: they are not run). The conversion itself (key map, joint codebook split, both stages of
a transformer checkpoint) runs everywhere on official-layout state dicts made from vqfast models.
"""
import importlib
import os
import sys
import types

import pytest
import torch

from vqfast import checkpoint
from vqfast.convert import convert
from vqfast.convert.put import pvqvae_key_map, transformer_key_map
from vqfast.models.put import PVQVAE, UQTransformer, put_sample

REPO = os.environ.get("VQFAST_PUT_REPO")
# Table 1's layout at a small size: r = 4 (the official decoder's widths are 64 * 2^i, so the
# ResBlock width is 64 * r / 2 = 128), d = 32, K = K' = 64, 8x8 tokens of a 32x32 image.
R, PATCH, D, K, RES_CH, DEPTH = 32, 4, 32, 64, 128, 2
T_DIM, T_DEPTH, T_HEADS = 64, 2, 4


def official_modules():
    """(PatchVQGAN, MaskedImageInpaintingTransformer) from the checkout, with the training-loss
    modules (never run here) stubbed."""
    sys.path.insert(0, REPO)
    for name, cls in (("image_synthesis.modeling.modules.vqgan_loss.vqperceptual", "VQLPIPSWithDiscriminator"),
                      ("image_synthesis.modeling.modules.edge_connect.losses", "EdgeConnectLoss")):
        stub = types.ModuleType(name)
        setattr(stub, cls, type(cls, (), {}))
        sys.modules.setdefault(name, stub)
    codec = importlib.import_module("image_synthesis.modeling.codecs.image_codec.patch_vqgan")
    model = importlib.import_module("image_synthesis.modeling.models.masked_image_inpainting_transformer_in_feature")
    return codec.PatchVQGAN, model.MaskedImageInpaintingTransformer


def official_codec_config():
    prefix = "image_synthesis.modeling.codecs.image_codec.patch_vqgan."
    return dict(
        target=prefix + "PatchVQGAN",
        params=dict(trainable=False, token_shape=[R // PATCH] * 2,
                    quantizer_config=dict(target=prefix + "VectorQuantizer", params=dict(
                        n_e=2 * K, e_dim=D, masked_embed_start=K, embed_ema=True, get_embed_type="retrive",
                        distance_type="euclidean")),
                    encoder_config=dict(target=prefix + "PatchEncoder2", params=dict(
                        in_ch=3, res_ch=RES_CH, out_ch=D, num_res_block=DEPTH, res_block_bottleneck=2,
                        stride=PATCH)),
                    decoder_config=dict(target=prefix + "PatchConvDecoder2", params=dict(
                        in_ch=D, out_ch=3, res_ch=RES_CH, num_res_block=DEPTH, res_block_bottleneck=2,
                        stride=PATCH, up_layer_with_image=True, encoder_downsample_layer="conv"))))


def perturb_(module, scale=0.05, seed=0):
    """Random non-default weights (biases, LayerNorms, positions included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def images_and_masks(B=3, seed=1):
    """images [B,3,R,R] in [-1, 1], mask [B,R,R] bool (True = missing): a box not aligned to patches."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, R, R, generator=g) * 2 - 1
    mask = torch.zeros(B, R, R, dtype=torch.bool)
    for b in range(B):
        top, left = torch.randint(0, R // 2, (2,), generator=g).tolist()
        mask[b, top:top + 11 + b, left:left + 13] = True
    return x, mask


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.skipif(not REPO, reason="set VQFAST_PUT_REPO to a checkout of liuqk3/PUT")
def test_converted_put_matches_the_official_modules(tmp_path):
    PatchVQGAN, Transformer = official_modules()
    torch.manual_seed(0)
    codec = official_codec_config()
    net = Transformer(n_layer=T_DEPTH, content_seq_len=(R // PATCH) ** 2, n_embd=T_DIM, n_head=T_HEADS, num_token=K,
                      embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0, block_activate="GELU2",
                      mlp_hidden_times=4, random_quantize=0.0, content_codec_config=codec).eval()
    perturb_(net)
    vq = net.content_codec
    with torch.no_grad():  # codes on the features' scale, so both codebooks see varied codes
        feats = vq.get_features(torch.rand(64, 3, R, R) * 255)["feature"].permute(0, 2, 3, 1).reshape(-1, D)
        vq.quantize.embedding.copy_(feats[torch.randperm(len(feats))[:2 * K]] + 0.01 * torch.randn(2 * K, D))
    torch.save({"model": net.state_dict(), "epoch": 1}, tmp_path / "transformer.pth")
    torch.save({"model": vq.state_dict()}, tmp_path / "p_vqvae.pth")

    stages = convert("put", tmp_path / "transformer.pth", tmp_path / "put", resolution=R, heads=T_HEADS)
    assert set(stages) == {"pvqvae", "transformer"}
    vae = checkpoint.load(tmp_path / "put-pvqvae", expected=PVQVAE)
    t = checkpoint.load(tmp_path / "put-transformer", expected=UQTransformer)
    alone = convert("put", tmp_path / "p_vqvae.pth", tmp_path / "vae", resolution=R).model
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in alone.state_dict().items())

    x, mask = images_and_masks()
    visible = ~mask[:, None]  # the official mask: True = visible, [B, 1, H, W]
    x255 = (x + 1) * 127.5
    with torch.no_grad():
        ref = vq.get_features(x255, mask=visible, return_token=True)
        enc = vae.encode(x, mask)
        ref_feat = ref["feature"].permute(0, 2, 3, 1)
        tokens = ref["token"]
        quant = vq.post_quant_conv(vq.quantize.get_codebook_entry(tokens.reshape(-1), shape=tokens.shape))
        ref_rec = vq.decoder(quant, vq.pre_process(x255 * visible), mask=visible)
        rec = vae.decode_tokens(enc.tokens, x, mask)
        ref_logits = net({"image": x255, "mask": visible}, return_logits=True)["logits"]
        logits = t(enc.features.flatten(1, 2))
    report = {"features": rel(enc.features, ref_feat), "reconstruction": rel(rec, ref_rec),
              "logits": rel(logits, ref_logits)}
    print("max relative differences to the official modules:", report)
    assert torch.equal(enc.tokens, tokens)
    assert (tokens < K).any() and (tokens >= K).any()  # both codebooks in use
    assert report["features"] < 1e-5 and report["reconstruction"] < 1e-5 and report["logits"] < 1e-5

    # Algorithm 1, greedy (top-K = 1): the official loop fills by max logit.
    seen = []
    decode = vq.decode
    vq.decode = lambda token, **kw: (seen.append(token.clone()), decode(token, **kw))[1]
    official = net.sample_largest(batch={"image": x255.clone(), "mask": visible.clone()}, filter_ratio=1.0,
                                  return_gt=False, return_mask_gt=False, return_reconstruction=False)
    ours = put_sample(vae, t, x, mask, top_k=1, select="logit", generator=0)
    assert torch.equal(ours.tokens.reshape(len(x), -1), seen[0])
    images = ((ours.images[:, 0] + 1) * 127.5).clamp(0, 255)
    print("Algorithm 1: tokens equal; max |image - official| (0-255):",
          float((images - official["completed"]).abs().max()))
    assert (images - official["completed"]).abs().max() < 1e-3


def official_layout_state(vae: PVQVAE, net: UQTransformer | None = None) -> dict:
    """The official state dict of vqfast models (inverse of the converter's key maps)."""
    own, state = vae.state_dict(), {}
    for mine, theirs in pvqvae_key_map(vae).items():
        if isinstance(theirs, str):
            state[theirs] = own[mine]
    q = vae.quantizer
    for theirs, mine in (("embedding", "embed"), ("cluster_size", "cluster_size"), ("embedding_avg", "embed_sum")):
        state[f"quantize.{theirs}"] = torch.cat([getattr(q.visible_codebook, mine), getattr(q.masked_codebook, mine)])
    state["loss.discriminator.conv.weight"] = torch.zeros(1)  # training-only: skipped
    if net is None:
        return state
    state = {f"content_codec.{k}": v for k, v in state.items()}
    own = net.state_dict()
    for mine, theirs in transformer_key_map(net).items():
        if isinstance(theirs, str):
            state[theirs] = own[mine]
        else:  # query, key, value of one block
            for key, part in zip(theirs[1], own[mine].chunk(3)):
                state[key] = part
    return state


def official_tiny():
    vae = PVQVAE(resolution=R, patch=PATCH, dim=D, codebook_size=K, hidden=RES_CH, res_hidden=RES_CH // 2,
                 depth=DEPTH, layout="cvpr2022").eval()
    net = UQTransformer(feature_dim=D, vocab_size=K, seq_len=(R // PATCH) ** 2, dim=T_DIM, depth=T_DEPTH,
                        heads=T_HEADS, layout="cvpr2022").eval()
    perturb_(vae), perturb_(net)
    return vae, net


def test_round_trip_through_the_official_layout(tmp_path):
    vae, net = official_tiny()
    torch.save({"model": official_layout_state(vae, net), "epoch": 3}, tmp_path / "official.pth")
    stages = convert("put", tmp_path / "official.pth", tmp_path / "put", resolution=R, heads=T_HEADS)
    assert stages["pvqvae"].skipped == ["loss.discriminator.conv.weight"]
    for stage, model in (("pvqvae", vae), ("transformer", net)):
        back = checkpoint.load(tmp_path / f"put-{stage}")
        assert back.config == model.config
        for k, v in model.state_dict().items():
            if not k.endswith("initted"):
                assert torch.equal(back.state_dict()[k], v), k
    x, mask = images_and_masks()
    back = checkpoint.load(tmp_path / "put-pvqvae")
    assert torch.equal(back.encode(x, mask).tokens, vae.encode(x, mask).tokens)


def test_a_p_vqvae_checkpoint_gives_one_model(tmp_path):
    vae, _ = official_tiny()
    torch.save({"model": official_layout_state(vae)}, tmp_path / "p_vqvae.pth")
    result = convert("put", tmp_path / "p_vqvae.pth", tmp_path / "vae", resolution=R)
    assert isinstance(result.model, PVQVAE) and result.model.config["layout"] == "cvpr2022"
    assert (tmp_path / "vae.safetensors").exists()


def test_mismatches_are_listed(tmp_path):
    vae, net = official_tiny()
    state = official_layout_state(vae, net)
    state["blocks.0.attn.extra.weight"] = torch.zeros(2)
    del state["content_codec.quant_conv.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="quant_conv.bias"):
        convert("put", tmp_path / "bad.pth", tmp_path / "o", resolution=R, heads=T_HEADS)
    state = official_layout_state(vae, net)
    state["blocks.0.attn.extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="unknown keys.*attn.extra"):
        convert("put", tmp_path / "bad.pth", tmp_path / "o", resolution=R, heads=T_HEADS)
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a PUT checkpoint"):
        convert("put", tmp_path / "other.pth", tmp_path / "o")
