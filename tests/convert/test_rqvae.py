"""kakaobrain/rq-vae-transformer RQ-VAE -> vqfast RQVAE. The side-by-side parity test runs the
official modules and is opt-in: set VQFAST_RQVAE_REPO to a local checkout of the official
repository. The conversion itself (shapes, the padding row, shared codebook) runs everywhere
on a synthetic state dict of the official layout made from a vqfast model."""
import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from vqfast import checkpoint
from vqfast.convert import convert
from vqfast.models.rq.tokenizer import RQVAE

REPO = os.environ.get("VQFAST_RQVAE_REPO")
# the released in256 layout at a small width: six levels, attention at 8x8 of a 256 input -> 2x2 of 64
DD = dict(double_z=False, z_channels=32, resolution=64, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 2, 2, 4, 4],
          num_res_blocks=1, attn_resolutions=[4], dropout=0.0)
K, DIM, DEPTH = 64, 16, 4


def official_rqvae():
    """The official RQVAE class, imported from the checkout without its package __init__ (whose
    transformer configs do not import on Python 3.11)."""
    for name, sub in (("rqvae", "rqvae"), ("rqvae.models", "rqvae/models")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(Path(REPO) / sub)]
        sys.modules.setdefault(name, mod)
    return importlib.import_module("rqvae.models.rqvae.rqvae").RQVAE


@pytest.mark.skipif(not REPO, reason="set VQFAST_RQVAE_REPO to a checkout of kakaobrain/rq-vae-transformer")
def test_converted_rqvae_matches_the_official_modules(tmp_path):
    torch.manual_seed(0)
    net = official_rqvae()(embed_dim=DIM, n_embed=K, decay=0.99, latent_shape=[2, 2, DIM], code_shape=[2, 2, DEPTH],
                           shared_codebook=True, restart_unused_codes=True, ddconfig=DD).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        cb = net.quantizer.codebooks[0]
        cb.weight[:-1] = torch.randn(K, DIM)  # codes on the latents' scale, so every depth picks varied codes
    torch.save({"state_dict": net.state_dict()}, tmp_path / "stage1.pt")
    result = convert("rqvae", tmp_path / "stage1.pt", tmp_path / "rq", resolution=64, code_depth=DEPTH)
    assert result.mapped > 0
    rq = checkpoint.load(tmp_path / "rq", expected=RQVAE)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref_codes = net.get_codes(x)
        ref_rec = net.decode_code(ref_codes)
        codes = rq.encode(x)
        rec = rq.decode_tokens(codes)
    assert torch.equal(codes, ref_codes)
    print(f"max |rec - official| = {float((rec - ref_rec).abs().max()):.3g}, official max {float(ref_rec.abs().max()):.3g}")
    assert (rec - ref_rec).abs().max() < 1e-5 * ref_rec.abs().max().clamp_min(1)


def official_layout_state(rq: RQVAE) -> dict:
    """The official state dict of a vqfast RQVAE (inverse of the converter's key map)."""
    from vqfast.convert import conv_layout
    own = rq.state_dict()
    state = {}
    for mine, theirs in conv_layout.key_map(rq).items():
        if isinstance(theirs, str):
            state[theirs] = own[mine]
        else:  # q, k, v of one attention block
            for key, part in zip(theirs[1], own[mine].chunk(3)):
                state[key] = part
    for d in range(rq.code_depth):
        state[f"quantizer.codebooks.{d}.weight"] = torch.cat([own["quantizer.codebooks.0.embed"], torch.zeros(1, rq.config["embed_dim"])])
        state[f"quantizer.codebooks.{d}.cluster_size_ema"] = own["quantizer.codebooks.0.cluster_size"]
        state[f"quantizer.codebooks.{d}.embed_ema"] = own["quantizer.codebooks.0.embed_sum"]
    return state


def test_round_trip_through_the_official_layout(tmp_path):
    rq = RQVAE.from_preset("tiny", attn_resolutions=(16,)).eval()
    torch.save(official_layout_state(rq), tmp_path / "official.pt")
    back = convert("rqvae", tmp_path / "official.pt", tmp_path / "rq", resolution=32).model.eval()
    for k, v in rq.state_dict().items():
        if not k.endswith("initted"):
            assert torch.equal(back.state_dict()[k], v), k
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(back.encode(x), rq.encode(x))


def test_per_depth_codebooks_are_refused(tmp_path):
    state = official_layout_state(RQVAE.from_preset("tiny").eval())
    state["quantizer.codebooks.1.weight"] = state["quantizer.codebooks.1.weight"] + 1
    torch.save(state, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="shared codebook"):
        convert("rqvae", tmp_path / "x.pt", tmp_path / "o", resolution=32)


def test_integer_codebook_is_refused(tmp_path):
    state = official_layout_state(RQVAE.from_preset("tiny").eval())
    for d in range(4):
        state[f"quantizer.codebooks.{d}.weight"] = state["quantizer.codebooks.0.weight"].long()
    torch.save(state, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"dtype of quantizer\.codebooks\.0\.weight torch\.int64"):
        convert("rqvae", tmp_path / "x.pt", tmp_path / "o", resolution=32)
