"""vqfast.train.adversarial: the adaptive weight against a hand computation, the discriminator's
start step, the perceptual term from a local VGG file, and bad options."""
import contextlib

import pytest
import torch
from vqfast.models.common.losses import VGGPerceptual
from vqfast.models.common.vqgan import VQGAN
from vqfast.train import TrainConfig, distributed, train
from vqfast.train.adversarial import PERCEPTUAL_HINT, GANRecipe, TokenizerCritic, adaptive_weight
from vqfast.train.data import BatchPlan
from vqfast.train.log import read_log
from vqfast.train.trainer import Trainer

RECIPE = GANRecipe(disc_start=1, disc_weight=0.8)


def config(data, out, **kw):
    base = dict(data=str(data), preset="tiny", out=str(out), steps=2, batch_size=2, progress=False, holdout=0.2)
    return TrainConfig("maskgit", "tokenizer", **{**base, **kw})


def test_adaptive_weight_matches_the_hand_computation():
    g = torch.Generator().manual_seed(0)
    B = 5
    x, target, v = torch.randn(B, 3, generator=g), torch.randn(B, 2, generator=g), torch.randn(B, 2, generator=g)
    W = torch.randn(2, 3, generator=g, requires_grad=True)
    y = x @ W.T  # the "last layer"
    nll, g_loss = ((y - target) ** 2).mean(), -(y * v).mean()
    # d nll / dW = 2 (y - t)^T x / (2B);  d g / dW = -v^T x / (2B)
    d_nll = 2 * (y.detach() - target).T @ x / (2 * B)
    d_g = -v.T @ x / (2 * B)
    expected = d_nll.norm() / (d_g.norm() + 1e-4)
    got = adaptive_weight(nll, g_loss, W)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not got.requires_grad
    assert adaptive_weight(1e9 * nll, g_loss, W).item() == 1e4  # clamped


def _critic(**kw):
    opts = dict(perceptual_weights=None, adversarial=True, disc_start=None, lr=1e-4, betas=(0.5, 0.9),
                device=torch.device("cpu"))
    return TokenizerCritic(RECIPE, **{**opts, **kw})


def test_generator_loss_adds_the_weighted_gan_term_from_disc_start_and_never_trains_d():
    model = VQGAN.from_preset("tiny").eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    rng = torch.get_rng_state()
    critic = _critic()
    assert torch.equal(rng, torch.get_rng_state()), "building the critic moved the run's random stream"
    before, _, _ = critic.generator_loss(model, x, None, step=0)
    after, real, fake = critic.generator_loss(model, x, None, step=1)
    assert "g_loss" not in before.terms and {"g_loss", "d_weight"} <= after.terms.keys()
    extra = after.terms["d_weight"] * after.terms["g_loss"]
    assert after.total.item() == pytest.approx((before.total + extra).item(), rel=1e-5)
    assert after.terms["d_weight"] > 0 and torch.equal(real, x) and fake.shape == x.shape
    after.total.backward()
    assert all(p.grad is None for p in critic.discriminator.parameters())
    assert model.decoder.net[-1].weight.grad.abs().sum() > 0


def test_discriminator_is_idle_before_disc_start_and_both_train_after(image_folder, tmp_path):
    trainer = Trainer(config(image_folder, tmp_path / "run", disc_start=1), distributed.setup("cpu"))
    d = trainer.critic.discriminator
    initial = {k: v.clone() for k, v in d.state_dict().items()}
    it = trainer._batches(BatchPlan(len(trainer.data), 2, seed=0), 0, 2)
    sums, _, _ = trainer.train_step(it, contextlib.nullcontext())
    assert not {"g_loss", "d_weight", "d_loss", "logits_real", "logits_fake"} & sums.keys()
    assert all(torch.equal(initial[k], v) for k, v in d.state_dict().items()), "D changed before disc_start"
    trainer.step = 1
    sums, _, _ = trainer.train_step(it, contextlib.nullcontext())
    assert sums["d_weight"] > 0 and sums["d_loss"] > 0 and "g_loss" in sums
    changed = [k for k, v in d.named_parameters() if not torch.equal(initial[k], v)]
    assert len(changed) == len(list(d.parameters())), "every discriminator weight trains after disc_start"


def test_no_adversarial_trains_without_a_discriminator(image_folder, tmp_path):
    run = train(config(image_folder, tmp_path / "plain", adversarial=False, disc_start=0))
    assert all("g_loss" not in r and "d_loss" not in r for r in read_log(run))


def test_perceptual_term_is_lpips_of_the_vgg_file(vgg_weights):
    path = vgg_weights()
    critic = _critic(perceptual_weights=str(path), adversarial=False)
    model = VQGAN.from_preset("tiny").eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    out, _, fake = critic.generator_loss(model, x, None, step=0)
    expected = VGGPerceptual.from_file(path)(x, fake)
    assert out.terms["perceptual"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() > 0
    plain = model(x).loss
    assert out.total.item() == pytest.approx((plain.total + expected).item(), rel=1e-5)


def test_runs_log_the_perceptual_terms_or_how_to_turn_them_on(image_folder, tmp_path, vgg_weights):
    run = train(config(image_folder, tmp_path / "lpips", steps=1, perceptual_weights=vgg_weights()))
    assert read_log(run)[0]["perceptual"] > 0 and not read_log(run, "note")
    put = train(TrainConfig("put", "tokenizer", data=str(image_folder), preset="tiny", out=str(tmp_path / "put"),
                            steps=1, batch_size=2, progress=False, holdout=0.2,
                            perceptual_weights=vgg_weights(depth=19)))
    record = read_log(put)[0]
    assert record["perc"] > 0 and record["style"] > 0 and record["g_loss"] > 0  # PUT: D from step 0
    run = train(config(image_folder, tmp_path / "off", steps=1))
    assert [r["note"] for r in read_log(run, "note")] == [PERCEPTUAL_HINT]


def test_bad_options_name_the_option(image_folder, tmp_path, vgg_weights):
    with pytest.raises(ValueError, match="perceptual_weights.*no file"):
        config(image_folder, tmp_path / "x", perceptual_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="disc_start"):
        config(image_folder, tmp_path / "x", disc_start=-1)
    with pytest.raises(ValueError, match="adversarial must be a bool"):
        config(image_folder, tmp_path / "x", adversarial="yes")
    with pytest.raises(ValueError, match="disc_start.*has no discriminator"):
        TrainConfig("maskgit", "model", data=str(image_folder), preset="tiny", out=str(tmp_path / "m"), disc_start=3)
    with pytest.raises(ValueError, match="perceptual_weights.*no perceptual term"):
        TrainConfig("maskgit", "model", data=str(image_folder), preset="tiny", out=str(tmp_path / "m"),
                    perceptual_weights=vgg_weights())


def test_a_run_without_discriminator_resumes_with_one_before_its_start(image_folder, tmp_path):
    straight = train(config(image_folder, tmp_path / "a", steps=3, disc_start=2))
    train(config(image_folder, tmp_path / "b", steps=3, disc_start=2, stop_after=1, adversarial=False))
    resumed = train(config(image_folder, tmp_path / "b", steps=3, disc_start=2, resume=True))
    assert [r["loss"] for r in read_log(straight)] == [r["loss"] for r in read_log(resumed)]
    late = tmp_path / "c"
    train(config(image_folder, late, steps=3, disc_start=0, stop_after=1, adversarial=False))
    with pytest.raises(ValueError, match="holds no discriminator.*--no-adversarial"):
        train(config(image_folder, late, steps=3, disc_start=0, resume=True))
