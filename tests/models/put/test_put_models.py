"""PUT models: P-VQVAE shapes and variants, dual-codebook routing, the loss, UQ-Transformer presets."""
import pytest
import torch

from vqfast.data import CropSampler, make_masks
from vqfast.models.put.losses import PVQVAELoss
from vqfast.models.put.tokenizer import PVQVAE
from vqfast.models.put.transformer import UQTransformer, uq_loss, uq_training_batch
from vqfast.models.put.transformer import TABLE3_PARAMS
from vqfast.reference.nearest_code import nearest_code as ref_nearest



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
    vae = PVQVAE.tiny(**variant)
    out = vae(x, m, ref_mask=make_masks("strokes", 4, 32, 32, generator=2))
    assert out.recon.shape == x.shape and out.x_hat.shape == x.shape
    assert out.features.shape == (4, 8, 8, 64) and out.z_q.shape == (4, 8, 8, 64)
    assert out.tokens.shape == (4, 8, 8) and out.token_visible.shape == (4, 8, 8)
    assert out.commit_loss.dim() == 0 and torch.isfinite(out.commit_loss)
    K = vae.codebook_size
    if variant.get("codebooks") == 1:
        assert int(out.tokens.max()) < K  # PUT^one: every patch uses e
    out.recon.sum().backward()
    assert vae.encoder.fc_in.weight.grad is not None if variant.get("encoder") != "conv" else True


def test_table1_layer_sizes():
    with torch.device("meta"):
        vae = PVQVAE()
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
        vae = PVQVAE(encoder="conv")
    assert [tuple(c.weight.shape) for c in vae.encoder.down] == [(64, 3, 4, 4), (128, 64, 4, 4), (256, 128, 4, 4)]
    assert vae.encoder.conv_out.weight.shape == (256, 256, 3, 3) and len(vae.encoder.res) == 8


def test_preset_size_pvqvae_meta():
    with torch.device("meta"):
        vae = PVQVAE().eval()
        x = torch.empty(2, 3, 256, 256)
        m = torch.zeros(2, 256, 256, dtype=torch.bool)
        out = vae(x, m)
    assert out.recon.shape == (2, 3, 256, 256) and out.features.shape == (2, 32, 32, 256)


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
    vae = PVQVAE.tiny().eval()
    m = torch.zeros(4, 32, 32, dtype=torch.bool)
    m[:, 0, 0] = True          # one missing pixel masks the whole first patch
    m[:, 12:20, 12:20] = True  # straddles four patches of r = 4: (3..4, 3..4)
    features, visible = vae.encode(x, m)
    expected = torch.ones(8, 8, dtype=torch.bool)
    expected[0, 0] = False
    expected[3:5, 3:5] = False
    assert torch.equal(visible, expected.expand(4, 8, 8))
    _, tokens, _ = vae.quantize(features, visible)
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
    assert torch.equal(vae.encode(x2, m)[0], features)


def test_pvqvae_overfits_one_batch(batch):
    torch.manual_seed(0)
    x, m = batch
    vae = PVQVAE.tiny(codebook_size=64)
    loss_fn = PVQVAELoss(adversarial=False)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    first = None
    for step in range(120):
        terms = loss_fn.generator_loss(vae(x, m))
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        first = first if first is not None else float(terms["pixel"].detach())
    assert float(terms["pixel"].detach()) < 0.4 * first, (first, float(terms["pixel"].detach()))


def test_loss_terms_and_vgg_file(batch, tmp_path):
    from safetensors.torch import save_file

    x, m = batch
    vae = PVQVAE.tiny()
    out = vae(x, m)
    terms = PVQVAELoss(disc_channels=8).generator_loss(out)
    assert float(terms["perc"]) == 0.0 and float(terms["style"]) == 0.0 and float(terms["adv"].detach()) > 0
    with pytest.raises(FileNotFoundError, match="vgg_weights"):
        PVQVAELoss(vgg_weights=tmp_path / "missing.pth")
    torch.manual_seed(0)
    vgg_layers = torch.nn.Sequential(*[torch.nn.Conv2d(a, b, 3, padding=1) for a, b in _vgg_pairs()])
    state = {}
    conv_idx = [i for i, v in enumerate(_vgg_layout()) if v == "conv"]
    for i, conv in zip(conv_idx, vgg_layers):
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = conv.weight.detach(), conv.bias.detach()
    path = tmp_path / "vgg19.safetensors"
    save_file(state, str(path))
    terms = PVQVAELoss(adversarial=False, vgg_weights=path).generator_loss(out)
    assert float(terms["perc"].detach()) > 0 and float(terms["style"].detach()) > 0
    terms["total"].backward()


def _vgg_pairs():
    from vqfast.models.put.losses import _VGG19_CFG
    chans, c = [], 3
    for v in _VGG19_CFG:
        if v != "M":
            chans.append((c, v))
            c = v
    return chans


def _vgg_layout():
    from vqfast.models.put.losses import _VGG19_CFG
    out = []
    for v in _VGG19_CFG:
        out += ["pool"] if v == "M" else ["conv", "relu"]
    return out


def test_uq_training_step(batch):
    x, m = batch
    torch.manual_seed(0)
    vae = PVQVAE.tiny()
    t = UQTransformer.tiny()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    b = uq_training_batch(vae, x, m, random_quantize=0.5, generator=torch.Generator().manual_seed(0))
    assert vae.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())  # frozen, no EMA step
    assert b.features.shape == (4, 64, 64) and b.targets.shape == (4, 64)
    assert bool((b.targets < vae.codebook_size).all())
    assert not bool((b.quantized & ~b.known).any()) and bool(b.quantized.any())
    loss = uq_loss(t, b)
    loss.backward()
    assert torch.isfinite(loss) and t.blocks[0].attn.qkv.weight.grad is not None and t.emb.weight.grad is not None


def test_bad_inputs(batch):
    x, m = batch
    vae = PVQVAE.tiny()
    with pytest.raises(ValueError, match="mask must have shape"):
        vae(x, m[:, :16])
    with pytest.raises(ValueError, match="mask must have shape"):
        vae(x, m[:2])
    with pytest.raises(TypeError, match="bool"):
        vae(x, m.float())
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        vae(x[..., :30, :30], m[..., :30, :30])
    with pytest.raises(ValueError, match=r"image must be a float tensor \[B, 3, H, W\]"):
        vae(x[:, :1], m)
    with pytest.raises(ValueError, match="patch must be a power of two"):
        PVQVAE(patch=6)
    with pytest.raises(ValueError, match="preset must be one of"):
        UQTransformer.from_preset("celeba", device="meta")
    t = UQTransformer.tiny()
    with pytest.raises(ValueError, match="features must be"):
        t(torch.randn(1, 64, 32))
    with pytest.raises(ValueError, match="seq_len"):
        t(torch.randn(1, 65, 64))


def test_checkpoint_round_trip(batch, tmp_path):
    from vqfast import checkpoint
    x, m = batch
    torch.manual_seed(0)
    vae, t = PVQVAE.tiny(encoder="conv"), UQTransformer.tiny(n_layers=1)
    vae(x, m)  # one EMA step, so the codebook buffers differ from their init
    vae.eval()
    checkpoint.save(vae, tmp_path / "vae")
    checkpoint.save(t, tmp_path / "t")
    vae2 = checkpoint.load(tmp_path / "vae", expected=PVQVAE)
    t2 = checkpoint.load(tmp_path / "t", expected=UQTransformer)
    assert vae2.config == vae.config and torch.equal(vae2(x, m).recon, vae(x, m).recon)
    f = torch.randn(2, 64, 64)
    assert torch.equal(t2(f), t.eval()(f))
    with pytest.raises(ValueError, match="expected"):
        checkpoint.load(tmp_path / "t", expected=PVQVAE)
