"""PUT's paper defaults and settings pinned: eq. 8 weights, the VGG-less warning, PUT^tok (Table 5),
Algorithm 1 line 14, the official CVPR'22 layout option and the official position choice."""
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vqfast.data import CropSampler, make_masks
from vqfast.models.common.losses import VGGFeatures
from vqfast.models.put import PVQVAE, PVQVAELoss, UQTransformer, put_fill, put_sample, uq_training_batch
from vqfast.models.put.transformer import GELU2


@pytest.fixture(scope="module")
def batch():
    x = CropSampler("test", size=32).sample(2, generator=0)
    return x, make_masks("box", 2, 32, 32, generator=3)


def test_eq8_weights_and_beta_are_the_papers():
    with pytest.warns(UserWarning):
        loss_fn = PVQVAELoss()
    # PUT supp. eq. 8: L_rec = L_pixel + 5 L_grad + 0.1 L_adv + 0.1 L_perc + 250 L_style; eq. 1: beta = 0.25.
    assert loss_fn.weights == {"grad": 5.0, "adv": 0.1, "perc": 0.1, "style": 250.0, "commit": 0.25}


def test_eq8_total_is_the_weighted_sum_of_its_terms(batch, tmp_path):
    x, m = batch
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in VGGFeatures(19).features.state_dict().items()}
    save_file(state, str(tmp_path / "vgg19.safetensors"))
    loss = PVQVAE.from_preset("tiny")(x, m, loss_fn=PVQVAELoss(disc_channels=8,
                                                               vgg_weights=tmp_path / "vgg19.safetensors")).loss
    t = {k: float(v) for k, v in loss.terms.items()}
    expected = t["pixel"] + 5 * t["grad"] + 0.1 * t["adv"] + 0.1 * t["perc"] + 250 * t["style"] + 0.25 * t["commit"]
    assert all(t[k] > 0 for k in ("pixel", "grad", "adv", "perc", "style", "commit"))
    assert float(loss.total.detach()) == pytest.approx(expected, rel=1e-5)


def test_without_vgg_the_loss_warns_once_and_says_so(batch, tmp_path):
    x, m = batch
    with pytest.warns(UserWarning, match="perceptual and style terms"):
        loss_fn = PVQVAELoss(adversarial=False)
    assert loss_fn.vgg_terms is False
    vae = PVQVAE.from_preset("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        terms = vae(x, m, loss_fn=loss_fn).loss.terms  # training steps do not warn again
        vae(x, m)  # the default loss of PVQVAE.forward is documented VGG-less: no warning
    assert float(terms["perc"]) == 0 and float(terms["style"]) == 0
    save_file({f"features.{k}": v for k, v in VGGFeatures(19).features.state_dict().items()},
              str(tmp_path / "vgg19.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PVQVAELoss(adversarial=False, vgg_weights=tmp_path / "vgg19.safetensors").vgg_terms is True


class Recorder(nn.Module):
    """A stand-in transformer (no vqfast Blocks, so put_fill runs it as is) that keeps its inputs."""

    def __init__(self, dim, vocab, seed=0):
        super().__init__()
        self.vocab_size, self.seen = vocab, []
        self.head = nn.Linear(dim, vocab)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(vocab, dim, generator=torch.Generator().manual_seed(seed)))

    def forward(self, features):
        self.seen.append(features.clone())
        return self.head(features)


@pytest.mark.parametrize("select", ["probability", "logit"])
def test_algorithm1_line14_writes_the_chosen_code_back(batch, select):
    """After each iteration the transformer's input at the filled positions is e_k of the drawn
    token k (and nothing else changed)."""
    x, m = batch
    vae = PVQVAE.from_preset("tiny").eval()
    enc = vae.encode(x, m)
    feats, toks, miss = enc.features.flatten(1, 2), enc.tokens.flatten(1), enc.mask.flatten(1)
    net = Recorder(feats.shape[-1], vae.vocab_size)
    fill = put_fill(net, vae.codes, feats, toks, miss, top_k=4, tokens_per_iter=2, generator=0, select=select)
    assert fill.iterations == len(net.seen) >= 2
    # put_fill runs the rows with positions left: the rows filling at iteration `it`, in order
    active = [[r for r in range(len(x)) if bool((fill.order[r] >= it).any())] for it in range(fill.iterations)]
    for it in range(fill.iterations - 1):
        for r in active[it + 1]:
            before, after = net.seen[it][active[it].index(r)], net.seen[it + 1][active[it + 1].index(r)]
            filled = fill.order[r] == it
            assert filled.any()
            assert torch.equal(after[filled], vae.codes(fill.tokens[r][filled]))
            assert torch.equal(after[~filled], before[~filled])


def test_select_logit_is_the_official_position_choice():
    """Position 0 has the largest max logit, position 1 the largest max probability."""
    V = 8

    class Fixed(nn.Module):
        vocab_size = V

        def forward(self, features):
            logits = torch.full((features.shape[0], 2, V), -10.0)
            logits[:, 0] = 5.0  # max logit 5, max probability 1/8
            logits[:, 1, 3] = 3.0  # max logit 3, max probability ~1
            return logits

    feats, known, miss = torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool)
    by_logit = put_fill(Fixed(), lambda t: torch.zeros(*t.shape, 4), feats, known, miss, top_k=1, select="logit")
    by_prob = put_fill(Fixed(), lambda t: torch.zeros(*t.shape, 4), feats, known, miss, top_k=1)
    assert by_logit.order.tolist() == [[0, 1]] and by_prob.order.tolist() == [[1, 0]]
    assert by_prob.tokens[0, 1] == 3
    with pytest.raises(ValueError, match="select"):
        put_fill(Fixed(), lambda t: t, feats, known, miss, select="entropy")


def test_put_tok_takes_the_quantized_vectors(batch):
    """PUT^tok (Table 5): inputs are e_t / e'_t of the tokens, in training and in Algorithm 1."""
    x, m = batch
    torch.manual_seed(0)
    vae = PVQVAE.from_preset("tiny").eval()
    tok = UQTransformer.from_preset("tiny", depth=1, token_input=True)
    enc = vae.encode(x, m)
    b = uq_training_batch(vae, x, m, generator=0, token_input=True)
    assert torch.equal(b.features, vae.codes(enc.tokens).flatten(1, 2))
    assert torch.equal(b.quantized, ~b.mask)
    tok.loss(b).total.backward()
    with pytest.raises(ValueError, match="token_input=True"):
        tok.loss(uq_training_batch(vae, x, m, generator=0))
    out = put_sample(vae, tok, x, m, top_k=4, generator=5)
    fill = put_fill(tok.eval(), vae.codes, vae.codes(enc.tokens).flatten(1, 2), enc.tokens.flatten(1),
                    enc.mask.flatten(1), top_k=4, generator=5)
    assert torch.equal(out.tokens[:, 0].flatten(1), fill.tokens)
    with torch.device("meta"):
        for name in ("ffhq-tok", "places2-tok", "imagenet-tok"):
            assert UQTransformer.from_preset(name).token_input


def test_official_layout_presets_and_default_unchanged():
    with torch.device("meta"):
        paper, official = PVQVAE.from_preset("paper"), PVQVAE.from_preset("cvpr2022-ffhq")
        t = UQTransformer.from_preset("cvpr2022-imagenet")
        for name in ("cvpr2022-places2", "cvpr2022-imagenet"):
            assert PVQVAE.from_preset(name).config == official.config
    extra = set(official.state_dict()) - set(paper.state_dict())
    assert extra == {f"{c}.{p}" for c in ("quant_conv", "post_quant_conv") for p in ("weight", "bias")}
    assert paper.config["layout"] == "vqfast" and paper.quant_conv is None
    assert official.decoder.res[0].conv2.kernel_size == (1, 1) and paper.decoder.res[0].conv2.kernel_size == (3, 3)
    assert all(isinstance(b.mlp[1], GELU2) for b in t.blocks)
    assert sum(p.numel() for p in t.parameters()) == sum(
        p.numel() for p in UQTransformer.from_preset("imagenet", device="meta").parameters())
    with pytest.raises(ValueError, match="layout"):
        PVQVAE(layout="official")
    with pytest.raises(ValueError, match="layout"):
        UQTransformer.from_preset("tiny", layout="cvpr")


@pytest.mark.parametrize("layout, fill", [("vqfast", 0.0), ("cvpr2022", -1.0)])
def test_missing_pixels_enter_the_encoder_as_the_layouts_fill(batch, layout, fill):
    x, m = batch
    vae = PVQVAE.from_preset("tiny", layout=layout).eval()
    filled = torch.where(m[:, None], torch.tensor(fill), x)
    assert torch.equal(vae.encode(x, m).features, vae.encode(filled).features)


def test_gelu2_is_the_sigmoid_approximation():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    assert torch.allclose(GELU2()(x), x / (1 + torch.exp(-1.702 * x)))
    assert (GELU2()(x) - nn.functional.gelu(x)).abs().max() < 0.03  # Hendrycks & Gimpel: a close approximation
