"""PUT models: P-VQVAE shapes and variants, dual-codebook routing, the loss, UQ-Transformer presets."""
import pytest
import torch

from vqfast.data import CropSampler, make_masks
from vqfast.models.common.losses import VGGFeatures
from vqfast.models.put import PVQVAE, PVQVAELoss, UQTransformer, uq_training_batch
from vqfast.models.put.transformer import TABLE3_PARAMS
from vqfast.reference.nearest_code import nearest_code as ref_nearest

# the VGG-less loss warning is pinned in test_put_paper.py
pytestmark = pytest.mark.filterwarnings("ignore:PVQVAELoss. no vgg_weights")


@pytest.fixture(scope="module")
def batch():
    x = CropSampler("train", size=32).sample(4, generator=0)
    m = make_masks("box", 4, 32, 32, generator=1)
    return x, m


VARIANTS = [pytest.param({}, id="default"), pytest.param(dict(encoder="conv"), id="conv"),
            pytest.param(dict(codebooks=1), id="one"), pytest.param(dict(reference=False), id="no-ref")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_shapes(batch, variant):
    x, m = batch
    torch.manual_seed(0)
    vae = PVQVAE.from_preset("tiny", **variant)
    out = vae(x, m, ref_mask=make_masks("strokes", 4, 32, 32, generator=2))
    enc = vae.encode(x, m)
    assert out.reconstruction.shape == x.shape
    assert enc.features.shape == (4, 8, 8, 64) and vae.codes(enc.tokens).shape == (4, 8, 8, 64)
    assert out.tokens.shape == (4, 8, 8) and enc.mask.shape == (4, 8, 8)
    commit = out.loss.terms["commit"]
    assert commit.dim() == 0 and torch.isfinite(commit)
    K = vae.codebook_size
    if variant.get("codebooks") == 1:
        assert int(out.tokens.max()) < K  # PUT^one: every patch uses e
    out.reconstruction.sum().backward()
    assert vae.encoder.fc_in.weight.grad is not None if variant.get("encoder") != "conv" else True


def test_table1_layer_sizes():
    with torch.device("meta"):
        vae = PVQVAE.from_preset("paper")
    enc, dec = vae.encoder, vae.decoder
    assert enc.fc_in.weight.shape == (256, 192) and len(enc.res) == 8
    assert enc.res[0].fc1.weight.shape == (128, 256) and enc.fc_out.weight.shape == (256, 256)
    assert dec.conv_in.weight.shape == (256, 256, 3, 3) and len(dec.res) == 8
    assert dec.res[0].conv1.weight.shape == (128, 256, 3, 3) and dec.res[0].conv2.weight.shape == (256, 128, 3, 3)
    # ConvTranspose2d weights are [in, out, k, k]: 256->256, 256->128, 128->64 (Table 1).
    assert [tuple(u.weight.shape[:2]) for u in dec.up] == [(256, 256), (256, 128), (128, 64)]
    assert dec.conv_out.weight.shape == (3, 64, 3, 3)
    # Reference branch (bracketed rows): 3->64 at full size, then 64->128, 128->256, 256->256.
    assert dec.ref_in.weight.shape == (64, 3, 3, 3)
    assert [tuple(c.weight.shape[:2]) for c in dec.ref_down] == [(128, 64), (256, 128), (256, 256)]


def test_conv_encoder_table2_sizes():
    with torch.device("meta"):
        vae = PVQVAE.from_preset("paper-conv")
    assert [tuple(c.weight.shape) for c in vae.encoder.down] == [(64, 3, 4, 4), (128, 64, 4, 4), (256, 128, 4, 4)]
    assert vae.encoder.conv_out.weight.shape == (256, 256, 3, 3) and len(vae.encoder.res) == 8


def test_preset_size_pvqvae_meta():
    with torch.device("meta"):
        vae = PVQVAE.from_preset("paper").eval()
        x = torch.empty(2, 3, 256, 256)
        m = torch.zeros(2, 256, 256, dtype=torch.bool)
        out = vae(x, m)
        enc = vae.encode(x, m)
    assert out.reconstruction.shape == (2, 3, 256, 256) and enc.features.shape == (2, 32, 32, 256)


@pytest.mark.parametrize("name", ["ffhq", "places2", "imagenet"])
def test_preset_transformer_meta(name):
    t = UQTransformer.from_preset(name, device="meta")
    n = sum(p.numel() for p in t.parameters())
    assert abs(n / TABLE3_PARAMS[name] - 1) < 0.02, (name, n)
    logits = t(torch.empty(2, 1024, 256, device="meta"))
    assert logits.shape == (2, 1024, 512) and logits.device.type == "meta"


def test_dual_codebook_routing(batch):
    x, _ = batch
    torch.manual_seed(0)
    vae = PVQVAE.from_preset("tiny").eval()
    m = torch.zeros(4, 32, 32, dtype=torch.bool)
    m[:, 0, 0] = True          # one missing pixel masks the whole first patch
    m[:, 12:20, 12:20] = True  # straddles four patches of r = 4: (3..4, 3..4)
    enc = vae.encode(x, m)
    features, visible = enc.features, ~enc.mask
    expected = torch.ones(8, 8, dtype=torch.bool)
    expected[0, 0] = False
    expected[3:5, 3:5] = False
    assert torch.equal(visible, expected.expand(4, 8, 8))
    tokens = enc.tokens
    K = vae.codebook_size
    e, e2 = vae.codes(torch.arange(K)), vae.codes(torch.arange(K, 2 * K))
    f = features.reshape(-1, features.shape[-1])
    v = visible.reshape(-1)
    t = tokens.reshape(-1)
    assert bool((t[v] < K).all()) and bool((t[~v] >= K).all())
    idx_e, _ = ref_nearest(f[v], e, "l2")
    idx_e2, _ = ref_nearest(f[~v], e2, "l2")
    assert torch.equal(t[v], idx_e) and torch.equal(t[~v], idx_e2 + K)
    # Missing pixels never reach the encoder: changing them leaves the features alone.
    x2 = torch.where(m[:, None], torch.randn_like(x), x)
    assert torch.equal(vae.encode(x2, m).features, features)


def test_pvqvae_overfits_one_batch(batch):
    torch.manual_seed(0)
    x, m = batch
    vae = PVQVAE.from_preset("tiny", codebook_size=64)
    loss_fn = PVQVAELoss(adversarial=False)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    first = None
    for step in range(120):
        loss = vae(x, m, loss_fn=loss_fn, step=step).loss
        terms = loss.terms
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        first = first if first is not None else float(terms["pixel"].detach())
    assert float(terms["pixel"].detach()) < 0.4 * first, (first, float(terms["pixel"].detach()))


def test_loss_terms_and_vgg_file(batch, tmp_path):
    from safetensors.torch import save_file

    x, m = batch
    vae = PVQVAE.from_preset("tiny")
    terms = vae(x, m, loss_fn=PVQVAELoss(disc_channels=8)).loss.terms
    assert float(terms["perc"]) == 0.0 and float(terms["style"]) == 0.0 and float(terms["adv"].detach()) > 0
    with pytest.raises(FileNotFoundError, match="vgg_weights"):
        PVQVAELoss(vgg_weights=tmp_path / "missing.pth")
    torch.manual_seed(0)
    # A torchvision-layout VGG-19 file (the layout itself is checked in tests/models/common/test_losses.py).
    state = {f"features.{k}": v for k, v in VGGFeatures(19).features.state_dict().items()}
    path = tmp_path / "vgg19.safetensors"
    save_file(state, str(path))
    loss = vae(x, m, loss_fn=PVQVAELoss(adversarial=False, vgg_weights=path)).loss
    terms = loss.terms
    assert float(terms["perc"].detach()) > 0 and float(terms["style"].detach()) > 0
    loss.total.backward()


def test_discriminator_loss_detaches_the_reconstruction(batch):
    x, m = batch
    vae = PVQVAE.from_preset("tiny")
    loss_fn = PVQVAELoss(disc_channels=8)
    out = vae(x, m, loss_fn=loss_fn)
    d = loss_fn.discriminator_loss(x * ~m[:, None], out.reconstruction)
    d.total.backward()
    assert all(p.grad is None for p in vae.parameters())
    assert loss_fn.discriminator.net[0].weight_orig.grad is not None
    assert 0 < float(d.terms["real"]) < 1 and 0 < float(d.terms["fake"]) < 1
    with pytest.raises(ValueError, match="adversarial=False"):
        PVQVAELoss(adversarial=False).discriminator_loss(x, out.reconstruction)


def test_uq_training_step(batch):
    x, m = batch
    torch.manual_seed(0)
    vae = PVQVAE.from_preset("tiny")
    t = UQTransformer.from_preset("tiny")
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    b = uq_training_batch(vae, x, m, random_quantize=0.5, generator=torch.Generator().manual_seed(0))
    assert vae.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())  # frozen, no EMA step
    assert b.features.shape == (4, 64, 64) and b.targets.shape == (4, 64)
    assert bool((b.targets < vae.codebook_size).all())
    assert not bool((b.quantized & b.mask).any()) and bool(b.quantized.any())
    loss = t.loss(b).total
    loss.backward()
    assert torch.isfinite(loss) and t.blocks[0].attn.qkv.weight.grad is not None and t.emb.weight.grad is not None


def test_bad_inputs(batch):
    x, m = batch
    vae = PVQVAE.from_preset("tiny")
    with pytest.raises(ValueError, match="mask must have shape"):
        vae(x, m[:, :16])
    with pytest.raises(ValueError, match="mask must have shape"):
        vae(x, m[:2])
    with pytest.raises(TypeError, match="bool"):
        vae(x, m.float())
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        vae(x[..., :30, :30], m[..., :30, :30])
    with pytest.raises(ValueError, match=r"images must be a float tensor \[B, 3, H, W\]"):
        vae(x[:, :1], m)
    with pytest.raises(ValueError, match="patch must be a power of two"):
        PVQVAE(patch=6)
    with pytest.raises(ValueError, match="unknown UQTransformer preset 'celeba'; choose one of"):
        UQTransformer.from_preset("celeba", device="meta")
    t = UQTransformer.from_preset("tiny")
    with pytest.raises(ValueError, match="features must be"):
        t(torch.randn(1, 64, 32))
    with pytest.raises(ValueError, match="seq_len"):
        t(torch.randn(1, 65, 64))


def test_bad_images_tokens_and_batches(batch):
    x, m = batch
    vae = PVQVAE.from_preset("tiny")
    with pytest.raises(ValueError, match="32x32"):  # the tiny preset is built for 32x32 images
        vae.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="empty batch"):
        vae.encode(x[:0], m[:0])
    with pytest.raises(ValueError, match="NaN or inf"):
        vae(torch.where(m[:, None], float("nan"), x), m)
    with pytest.raises(ValueError, match="resolution must be"):
        PVQVAE(patch=4, resolution=30)
    enc = vae.eval().encode(x, m)
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 256\)"):
        vae.decode_tokens(enc.tokens + 2 * vae.codebook_size, x, m)
    with pytest.raises(ValueError, match="tokens must be an int64 tensor"):
        vae.decode_tokens(enc.tokens.int(), x, m)
    with pytest.raises(ValueError, match="tokens must be an int64 tensor"):
        vae.decode_tokens(enc.tokens[:, :4], x, m)
    with pytest.raises(ValueError, match="z must be"):
        vae.decode(enc.features[..., :8], x, m)
    t = UQTransformer.from_preset("tiny")
    with pytest.raises(TypeError, match="batch must be a UQTrainingBatch"):
        t.loss((enc.features.flatten(1, 2), enc.tokens.flatten(1)))
    with pytest.raises(ValueError, match="random_quantize"):
        uq_training_batch(vae, x, m, random_quantize=1.5)
    with pytest.raises(TypeError, match="generator"):
        uq_training_batch(vae, x, m, generator=0.5)


def test_encode_does_not_touch_the_codebooks(batch):
    x, m = batch
    vae = PVQVAE.from_preset("tiny").train()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    enc = vae.encode(x, m)
    assert vae.training and vae.quantizer.training
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    # The tokens are the quantizer's own routing: e where the patch is visible, e' (offset K) elsewhere.
    _, tokens, _ = vae.eval().quantize(enc.features, enc.mask)
    assert torch.equal(enc.tokens, tokens)
    assert torch.equal(enc.mask, vae.token_mask(m))


def test_checkpoint_round_trip(batch, tmp_path):
    from vqfast import checkpoint
    x, m = batch
    torch.manual_seed(0)
    vae, t = PVQVAE.from_preset("tiny", encoder="conv"), UQTransformer.from_preset("tiny", depth=1)
    vae(x, m)  # one EMA step, so the codebook buffers differ from their init
    vae.eval()
    checkpoint.save(vae, tmp_path / "vae")
    checkpoint.save(t, tmp_path / "t")
    vae2 = checkpoint.load(tmp_path / "vae", expected=PVQVAE)
    t2 = checkpoint.load(tmp_path / "t", expected=UQTransformer)
    assert vae2.config == vae.config and torch.equal(vae2(x, m).reconstruction, vae(x, m).reconstruction)
    f = torch.randn(2, 64, 64)
    assert torch.equal(t2(f), t.eval()(f))
    with pytest.raises(ValueError, match="expected"):
        checkpoint.load(tmp_path / "t", expected=PVQVAE)


def test_checkpoints_with_the_old_config_names_load(batch, tmp_path):
    """Configs saved before the protocol renames (n_res; n_layers, n_heads; no resolution) still load."""
    import json

    from vqfast import checkpoint
    x, m = batch
    vae, t = PVQVAE.from_preset("tiny").eval(), UQTransformer.from_preset("tiny", depth=2)
    for model, name, renames in ((vae, "vae", {"depth": "n_res"}), (t, "t", {"depth": "n_layers", "heads": "n_heads"})):
        _, cfg_path = checkpoint.save(model, tmp_path / name)
        saved = json.loads(cfg_path.read_text())
        saved["config"] = {renames.get(k, k): v for k, v in saved["config"].items() if k != "resolution"}
        cfg_path.write_text(json.dumps(saved))
    vae2 = checkpoint.load(tmp_path / "vae", expected=PVQVAE)
    t2 = checkpoint.load(tmp_path / "t", expected=UQTransformer)
    assert vae2.config["depth"] == 2 and vae2.config["resolution"] is None
    assert t2.config["depth"] == 2 and t2.config["heads"] == 4
    assert torch.equal(vae2.encode(x, m).tokens, vae.encode(x, m).tokens)
    f = torch.randn(2, 64, 64)
    assert torch.equal(t2.eval()(f), t.eval()(f))
