"""Contextual RQ-Transformer and RQ-VAE: shapes, Table 1 sizes, the depth cache, training, old checkpoints."""
import json

import pytest
import torch

from vqfast import checkpoint
from vqfast.models.rq.transformer import ContextualRQTransformer
from vqfast.models.rq.tokenizer import RQVAE


SMALL = dict(codebook_size=32, grid=(3, 5), code_depth=3, dim=64, spatial_depth=2, depth_depth=2)


def _codes(net, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = net.grid
    return torch.randint(net.codebook_size, (B, H, W, net.code_depth), generator=g)


@pytest.mark.parametrize("name, paper", [("371M", 371e6), ("821M", 821e6), ("1.4B", 1.4e9)])
def test_preset_parameter_counts_match_table_1(name, paper):
    with torch.device("meta"):
        net = ContextualRQTransformer.from_preset(name)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - paper) / paper < 0.03, f"{name}: {n / 1e6:.1f}M parameters"
    assert net.config["heads"] * 64 == net.config["dim"]  # head dim 64 (supp. A.2)


@pytest.mark.parametrize("num_classes", [0, 7])
def test_shapes_and_loss(num_classes):
    net = ContextualRQTransformer(**SMALL, num_classes=num_classes)
    codes = _codes(net, 2)
    masked = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    labels = torch.tensor([1, 6]) if num_classes else None
    assert net(codes, masked, labels).shape == (2, 3, 5, 3, 32)
    assert net.spatial_forward(codes, masked, labels).shape == (2, 15, 64)
    loss = net.loss(codes, class_labels=labels, generator=0).total
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert net.code_emb.weight.grad is not None and net.mask_emb.grad is not None


def test_masked_stacks_are_never_read():
    net = ContextualRQTransformer(**SMALL).eval()
    codes = _codes(net, 2)
    masked = torch.zeros(2, 3, 5, dtype=torch.bool)
    masked[:, 1, 1:4] = True
    other = torch.where(masked[..., None], _codes(net, 2, seed=5), codes)
    torch.testing.assert_close(net.spatial_forward(codes, masked), net.spatial_forward(other, masked))
    assert not torch.allclose(net.spatial_forward(codes, masked), net.spatial_forward(codes, ~masked))


def test_depth_is_causal_and_cached_steps_equal_teacher_forcing():
    net = ContextualRQTransformer(**SMALL).eval()
    codes = _codes(net, 2).reshape(-1, 3)
    h = torch.randn(codes.shape[0], 64, generator=torch.Generator().manual_seed(2))
    full = net.depth_forward(h, codes)
    changed = codes.clone()
    changed[:, 2] = (changed[:, 2] + 1) % 32  # the last code never influences any prediction
    torch.testing.assert_close(net.depth_forward(h, changed), full)
    seen = []
    stacks = net.sample_stacks(h, lambda d, logits: seen.append(logits) or codes[:, d])
    assert torch.equal(stacks, codes)
    for d in range(3):
        torch.testing.assert_close(seen[d], full[:, d], atol=1e-5, rtol=1e-5)


def test_bad_inputs_name_the_argument():
    net = ContextualRQTransformer(**SMALL)
    codes = _codes(net, 1)
    masked = torch.zeros(1, 3, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="codes must be"):
        net(codes[..., :2], masked)
    with pytest.raises(TypeError, match="codes"):
        net(codes.int(), masked)
    with pytest.raises(ValueError, match="masked"):
        net(codes, masked[:, :2])
    with pytest.raises(ValueError, match="class_labels"):
        net(codes, masked, torch.tensor([1]))
    with pytest.raises(ValueError, match=r"lie in \[0, 32\)"):
        net.loss(codes + 32)
    with pytest.raises(ValueError, match="preset"):
        ContextualRQTransformer.from_preset("2B")
    with pytest.raises(ValueError, match="dim"):
        ContextualRQTransformer(32, dim=0)


def test_tiny_model_overfits_a_batch():
    torch.manual_seed(0)
    net = ContextualRQTransformer(codebook_size=16, grid=(4, 4), code_depth=2, dim=64, spatial_depth=2,
                                  depth_depth=1, num_classes=4, class_dropout=0.0)
    codes = _codes(net, 4, seed=3)
    labels = torch.arange(4)  # one class per map: a fully masked map is determined by its class
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    first = float(net.loss(codes, class_labels=labels, generator=0).total.detach())
    for _ in range(150):
        loss = net.loss(codes, class_labels=labels, generator=g).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    full = torch.ones(4, 4, 4, dtype=torch.bool)
    final = float(net.eval().loss(codes, class_labels=labels, mask=full).total.detach())
    assert first > 2.0 and final < 0.1, (first, final)


def test_tiny_preset_matches_tiny_rqvae():
    net, rq = ContextualRQTransformer.from_preset("tiny"), RQVAE.from_preset("tiny")
    assert (net.codebook_size, net.grid, net.code_depth) == (rq.codebook_size, rq.token_hw, rq.code_depth)
    assert set(ContextualRQTransformer.PRESETS) >= {"371M", "821M", "1.4B", "tiny"}


def test_rqvae_shapes_codes_and_training_step():
    torch.manual_seed(0)
    rq = RQVAE(resolution=16, ch=16, ch_mult=(1, 2), codebook_size=32, embed_dim=8, code_depth=3)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    loss, logs = rq(x).loss
    loss.backward()
    assert set(logs) == {"rec", "commit"} and rq.encoder.net[0].weight.grad is not None
    rq.eval()
    rec, codes, _ = rq(x)
    assert codes.shape == (2, 8, 8, 3) and codes.dtype == torch.long
    torch.testing.assert_close(rq.decode_tokens(codes), rec)
    with pytest.raises(ValueError, match="tokens must be"):
        rq.decode_tokens(codes[..., :2])
    with pytest.raises(ValueError, match="images must be"):
        rq.encode(x[:, :, :8])
    with torch.device("meta"):
        paper = RQVAE.from_preset("paper")
    assert paper.token_hw == (8, 8) and paper.codebook_size == 16384


def test_code_shape_and_loss_output():
    net = ContextualRQTransformer.from_preset("tiny-cond")
    assert net.code_shape == (8, 8, 4) and net.config["spatial_depth"] == 4 and net.config["depth_depth"] == 2
    codes = _codes(net, 2)
    out = net.loss(codes, class_labels=torch.tensor([0, 9]), generator=0)
    assert set(out.terms) == {"nll"} and out.total.requires_grad and not out.terms["nll"].requires_grad
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 10\]"):
        net.loss(codes, class_labels=torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="at least one map"):
        net.loss(codes[:0])


def test_checkpoint_with_the_old_names_loads(tmp_path):
    """Checkpoints saved with n_spatial / n_depth under the flat module path rebuild the same model."""
    torch.manual_seed(0)
    net = ContextualRQTransformer(**SMALL, num_classes=3).eval()
    checkpoint.save(net, tmp_path / "old")
    meta = tmp_path / "old.json"
    record = json.loads(meta.read_text())
    config = record["config"]
    config["n_spatial"], config["n_depth"] = config.pop("spatial_depth"), config.pop("depth_depth")
    record["class"] = "vqfast.models.rq_transformer.ContextualRQTransformer"
    meta.write_text(json.dumps(record))
    back = checkpoint.load(tmp_path / "old", expected=ContextualRQTransformer)
    assert back.config == net.config
    codes = _codes(net, 2)
    masked = torch.zeros(2, 3, 5, dtype=torch.bool)
    masked[:, 1] = True
    with torch.no_grad():
        assert torch.equal(back(codes, masked), net(codes, masked))
