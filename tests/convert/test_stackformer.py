"""CrossmodalGroup/MaskedVectorQuantization Stackformer (ReverseStackedPositionGPT) -> vqfast
Stackformer. The side-by-side parity test runs the official module and is opt-in: set
VQFAST_MQVAE_REPO to a local checkout of the official repository. The index remaps (start token
row, sliced class-conditional head) are checked everywhere on a state dict of the official layout
written out by hand from a vqfast model."""
import importlib
import os
import sys

import pytest
import torch

from vqfast import checkpoint
from vqfast.convert import convert
from vqfast.models.mqvae import Stackformer

REPO = os.environ.get("VQFAST_MQVAE_REPO")
K, HW, DIM, HEADS, N = 32, 16, 64, 4, 6


def official_gpt(vocab: int):
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    gpt = importlib.import_module("modules.masked_quantization_stage2.stackedgpt").ReverseStackedPositionGPT
    return gpt(vocab_size=vocab, position_size=HW + 1, block_size=16, position_layer=1, value_layer=2, n_head=HEADS,
               n_embd=DIM, embd_pdrop=0.1, resid_pdrop=0.1, attn_pdrop=0.1, add_absolute_position=True)


def _pairs(batch: int, generator: torch.Generator):
    codes = torch.randint(0, K, (batch, N), generator=generator)
    positions = torch.stack([torch.randperm(HW, generator=generator)[:N].sort().values for _ in range(batch)])
    return codes, positions


@pytest.mark.skipif(not REPO, reason="set VQFAST_MQVAE_REPO to a checkout of CrossmodalGroup/MaskedVectorQuantization")
@pytest.mark.parametrize("num_classes", [0, 5], ids=["uncond", "class"])
def test_converted_stackformer_matches_the_official_module(tmp_path, num_classes):
    torch.manual_seed(0)
    net = official_gpt(K + max(num_classes, 1)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save({"state_dict": {f"transformer.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "s2.ckpt")
    result = convert("stackformer", tmp_path / "s2.ckpt", tmp_path / "sf", codebook_size=K, heads=HEADS)
    assert result.mapped == len(result.model.state_dict())
    sf = checkpoint.load(tmp_path / "sf", expected=Stackformer).eval()
    g = torch.Generator().manual_seed(1)
    codes, positions = _pairs(3, g)
    labels = torch.randint(0, num_classes, (3,), generator=g) if num_classes else None
    start = labels if num_classes else torch.full((3,), K)  # the official sos_token of the unconditional model
    idx = torch.cat([start[:, None], codes + num_classes], 1)
    pos_idx = torch.cat([torch.full((3, 1), HW), positions], 1)
    with torch.no_grad():
        ref = net(idx, pos_idx)
        code_logits, position_logits = sf(codes, positions, labels)
    ref_code = ref["value_logits"][..., num_classes:num_classes + K]
    diffs = [float((a - b).abs().max() / b.abs().max()) for a, b in
             ((code_logits, ref_code), (position_logits, ref["position_logits"]))]
    print(f"Stackformer ({num_classes} classes): max rel. diff code logits {diffs[0]:.3g}, position {diffs[1]:.3g}")
    assert max(diffs) < 1e-5


def official_layout_state(sf: Stackformer) -> dict:
    """The official ReverseStackedPositionGPT state dict of a vqfast Stackformer, written out key by
    key: unconditional start token at row K of value_emb, K + C head rows (class rows zero)."""
    own, C = sf.state_dict(), sf.num_classes
    emb = own["code_emb.weight"]
    state = {"value_emb.weight": torch.cat([emb[1:], emb[:1]]) if C == 0 else emb,
             "value_head.1.weight": torch.cat([torch.zeros(C, DIM), own["code_head.weight"]] if C else
                                              [own["code_head.weight"], torch.zeros(1, DIM)]),
             "value_pos_emb.weight": own["position_emb.weight"], "position_head.1.weight": own["position_head.weight"],
             "pos_emb": own["seq_pos"]}
    for w in ("weight", "bias"):
        state[f"value_head.0.{w}"], state[f"position_head.0.{w}"] = own[f"code_norm.{w}"], own[f"position_norm.{w}"]
    for mine, theirs in (("code_blocks", "value_transformer"), ("position_blocks", "position_transformer")):
        for i in range(len(getattr(sf, mine))):
            p, s = f"{mine}.{i}", f"{theirs}.{i}"
            for w in ("weight", "bias"):
                q, k, v = own[f"{p}.attn.qkv.{w}"].chunk(3)
                state.update({f"{s}.attn.query.{w}": q, f"{s}.attn.key.{w}": k, f"{s}.attn.value.{w}": v,
                              f"{s}.attn.proj.{w}": own[f"{p}.attn.proj.{w}"], f"{s}.ln1.{w}": own[f"{p}.norm1.{w}"],
                              f"{s}.ln2.{w}": own[f"{p}.norm2.{w}"], f"{s}.mlp.0.{w}": own[f"{p}.mlp.0.{w}"],
                              f"{s}.mlp.2.{w}": own[f"{p}.mlp.2.{w}"]})
            state[f"{s}.attn.mask"] = torch.tril(torch.ones(1, 1, N, N))
    return state


@pytest.mark.parametrize("num_classes", [0, 5], ids=["uncond", "class"])
def test_round_trip_through_the_official_layout(tmp_path, num_classes):
    torch.manual_seed(0)
    sf = Stackformer(codebook_size=K, num_positions=HW, num_classes=num_classes, dim=DIM, code_depth=2,
                     position_depth=1, heads=HEADS, max_len=N).eval()
    state = {f"transformer.{k}": v for k, v in official_layout_state(sf).items()}
    state["first_stage_model.encoder.conv_in.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "s2.ckpt")
    result = convert("stackformer", tmp_path / "s2.ckpt", tmp_path / "sf", codebook_size=K, heads=HEADS)
    assert result.model.num_classes == num_classes and result.model.config["max_len"] == N
    back = checkpoint.load(tmp_path / "sf", expected=Stackformer).eval()
    codes, positions = _pairs(2, torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 4]) if num_classes else None
    for a, b in zip(back(codes, positions, labels), sf(codes, positions, labels)):
        assert torch.equal(a, b)


def test_vocabulary_not_larger_than_the_codebook_is_refused(tmp_path):
    sf = Stackformer(codebook_size=K, num_positions=HW, dim=DIM, code_depth=1, position_depth=1, heads=HEADS,
                     max_len=N)
    torch.save(official_layout_state(sf), tmp_path / "s2.pt")
    with pytest.raises(ValueError, match="not more than codebook_size"):
        convert("stackformer", tmp_path / "s2.pt", tmp_path / "o", codebook_size=K + 1, heads=HEADS)


def test_codebook_size_other_than_the_first_stage_is_refused(tmp_path):
    sf = Stackformer(codebook_size=K, num_positions=HW, dim=DIM, code_depth=1, position_depth=1, heads=HEADS,
                     max_len=N)
    state = {f"transformer.{k}": v for k, v in official_layout_state(sf).items()}
    state["first_stage_model.quantize.codebook.weight"] = torch.zeros(K, 4)
    torch.save({"state_dict": state}, tmp_path / "s2.ckpt")
    with pytest.raises(ValueError, match=f"codebook_size={K - 6}, but the checkpoint's MQ-VAE has {K} codes"):
        convert("stackformer", tmp_path / "s2.ckpt", tmp_path / "o", codebook_size=K - 6, heads=HEADS)
