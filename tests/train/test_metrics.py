"""vqfast.train.metrics on known inputs, the FID path on a random-weight feature network against
the closed-form Frechet distance, IS on a scripted Inception stand-in against exp(E KL), LPIPS
from a random VGG file, and `python -m vqfast eval` on trained runs."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import linalg

from vqfast.__main__ import main
from vqfast.train import TrainConfig, train
from vqfast.models.common.losses import VGGPerceptual
from vqfast.train.data import open_images
from vqfast.train.families import get_stage
from vqfast.train.metrics import (FID, FID_HINT, IS_HINT, InceptionScore, codebook_stats, evaluate_run,
                                  inception_features, inception_logits, lpips_model, psnr_ssim)
from vqfast.train.stage_metrics import stage_metrics


def test_psnr_of_a_constant_offset_and_ssim_of_identical_images():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    offset = 0.1  # in [-1, 1] units: 0.05 in [0, 1]
    m = psnr_ssim(x, x + offset)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / 0.05 ** 2), rel=1e-4)
    assert psnr_ssim(x, x)["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_masked_psnr_only_scores_the_hole():
    x = torch.zeros(1, 3, 8, 8)
    fake = x.clone()
    fake[..., :4] = 1.0  # wrong only on the left half (0.5 in [0, 1] units)
    hole = torch.zeros(1, 8, 8, dtype=torch.bool)
    hole[..., 4:] = True
    assert psnr_ssim(x, fake, hole)["psnr"] > 100  # the right half is exact
    left = ~hole
    assert psnr_ssim(x, fake, left)["psnr"] == pytest.approx(10 * math.log10(1 / 0.25), rel=1e-5)
    with pytest.raises(ValueError, match="mask must be bool"):
        psnr_ssim(x, fake, hole.float())


def test_codebook_stats_of_known_tokens():
    s = codebook_stats(torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), 8)
    assert s["codebook_usage"] == 0.5 and s["perplexity"] == pytest.approx(4.0)


class RandomFeatures(torch.nn.Module):
    """A random-weight stand-in for Inception: images [B, 3, H, W] in [0, 1] -> 16 features."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)

    def forward(self, x, return_features: bool = True):
        return torch.tanh(self.conv(x)).mean((2, 3))


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_the_closed_form_on_random_features():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(64, 3, 12, 12, generator=g) * 2 - 1
    fake = (torch.rand(64, 3, 12, 12, generator=g) * 1.2 - 0.8).clamp(-1, 1)
    net = RandomFeatures()
    fid = FID(net)
    fid.update(real[:32], real=True), fid.update(real[32:], real=True), fid.update(fake, real=False)
    with torch.no_grad():
        feats = [net((x + 1) / 2).double().numpy() for x in (real, fake)]
    assert fid.compute() == pytest.approx(frechet(*feats), rel=1e-4)


def test_inception_features_skip_without_a_file_and_reject_a_missing_one(tmp_path):
    assert inception_features(None) == (None, FID_HINT)
    with pytest.raises(ValueError, match="no file"):
        inception_features(str(tmp_path / "nope.pt"))


class InceptionStandIn(torch.nn.Module):
    """The TorchScript Inception's interface with random weights: images [B, 3, H, W] in [0, 255] ->
    16 features, or softmax probabilities over 10 classes (return_features=False)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=8)
        self.fc = torch.nn.Linear(16, 10)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) * 4)

    def forward(self, x, return_features: bool = False):
        features = torch.tanh(self.conv(x / 255 - 0.5)).mean((2, 3))
        if return_features:
            return features
        return torch.softmax(self.fc(features), dim=1)


def test_inception_score_matches_exp_of_the_mean_kl(tmp_path):
    net = torch.jit.script(InceptionStandIn())
    net.save(str(tmp_path / "inception.pt"))
    logits, why = inception_logits(str(tmp_path / "inception.pt"))
    assert why == ""
    images = torch.rand(12, 3, 24, 24, generator=torch.Generator().manual_seed(4)) * 2 - 1
    score = InceptionScore(logits, splits=1)
    score.update(images[:5]), score.update(images[5:])
    mean, _ = score.compute()
    with torch.no_grad():  # p(y|x) of the archive, exactly as it sees the images
        x = torch.nn.functional.interpolate((images + 1) / 2 * 255, size=(299, 299), mode="bilinear",
                                            align_corners=False)
        p = net(x, return_features=False).double()
    marginal = p.mean(0, keepdim=True)
    expected = torch.exp((p * (p.log() - marginal.log())).sum(1).mean())
    assert mean == pytest.approx(float(expected), rel=1e-5)
    assert 1.0 < mean < 10.0
    split = InceptionScore(logits, splits=3)
    split.update(images)
    assert split.compute(seed=1) == split.compute(seed=1)  # the shuffle before splitting is seeded
    assert inception_logits(None) == (None, IS_HINT)


def test_lpips_is_zero_for_identical_images_and_the_vgg_distance_otherwise(vgg_weights):
    lpips, why = lpips_model(vgg_weights())
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert why == "" and lpips(x, x).item() == 0.0
    direct = VGGPerceptual.from_file(vgg_weights())(x, y)
    assert lpips(x, y).item() == pytest.approx(direct.item(), rel=1e-6) and direct.item() > 0
    with pytest.raises(ValueError, match="lpips_weights: no file"):
        lpips_model(str(vgg_weights().replace("vgg16", "missing")))


def test_lpips_of_reconstructions_averages_over_batches_as_one_call(image_folder, tmp_path, vgg_weights):
    run = train(TrainConfig("maskgit", "tokenizer", data=str(image_folder), preset="tiny", out=str(tmp_path / "r"),
                            steps=1, batch_size=2, progress=False, holdout=0.0))
    from vqfast import checkpoint
    from vqfast.train.checkpointing import model_path
    model = checkpoint.load(model_path(run)).eval()
    images = open_images(str(image_folder), 32, split="train", holdout=0.0)
    lpips = VGGPerceptual.from_file(vgg_weights())
    report = stage_metrics(get_stage("maskgit", "tokenizer"), model, None, images, None, batch_size=3, max_images=7,
                           device=torch.device("cpu"), lpips=lpips)
    x = torch.stack([images[(i, None)][0] for i in range(7)])
    with torch.no_grad():
        expected = lpips(x, model(x).reconstruction)
    assert report["lpips"] == pytest.approx(expected.item(), rel=1e-5)


def test_eval_command_scores_a_tokenizer_run(image_folder, tmp_path, capsys, vgg_weights):
    run = train(TrainConfig("maskgit", "tokenizer", data=str(image_folder), preset="tiny", out=str(tmp_path / "r"),
                            steps=1, batch_size=2, progress=False, holdout=0.3))
    scripted = torch.jit.script(RandomFeatures())
    scripted.save(str(tmp_path / "features.pt"))
    main(["eval", str(run), "--inception-weights", str(tmp_path / "features.pt"), "--batch-size", "2",
          "--lpips-weights", vgg_weights()])
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((run / "metrics.json").read_text())
    assert report["images"] >= 2 and 0 < report["psnr"] < 60 and -1 <= report["ssim"] <= 1
    assert 0 < report["codebook_usage"] <= 1 and report["perplexity"] >= 1 and report["fid"] >= 0
    assert report["lpips"] > 0 and "is" not in report  # IS scores class-conditional samples only
    main(["eval", str(run), "--inception-weights", str(tmp_path / "features.pt"), "--max-images", "1"])
    capsys.readouterr()
    one = json.loads((run / "metrics.json").read_text())
    assert one["images"] == 1 and "fid" not in one and "at least 2 images" in one["fid_skipped"]
    main(["eval", str(run)])
    out = capsys.readouterr().out
    assert "FID skipped: pass --inception-weights" in out and '"fid"' not in out
    assert "LPIPS skipped: pass --lpips-weights" in out and '"lpips"' not in out


def test_eval_command_scores_class_conditional_samples_with_is(image_folder, tmp_path):
    common = dict(data=str(image_folder), steps=1, batch_size=2, progress=False, holdout=0.3)
    tok = train(TrainConfig("rq", "tokenizer", preset="tiny", out=str(tmp_path / "tok"), **common))
    model = train(TrainConfig("rq", "model", preset="tiny-cond", out=str(tmp_path / "m"), tokenizer=str(tok),
                              **common))
    torch.jit.script(InceptionStandIn()).save(str(tmp_path / "inception.pt"))
    main(["eval", str(model), "--inception-weights", str(tmp_path / "inception.pt"), "--batch-size", "2"])
    report = json.loads((model / "metrics.json").read_text())
    assert 1 - 1e-5 <= report["is"] <= 10  # IS lies in [1, classes]
    assert "fid" in report and "lpips" not in report and "lpips_skipped" not in report


@pytest.mark.parametrize("count, world", [(1, 2), (5, 2), (7, 3), (4, 4), (3, 5)])
def test_rank_shares_of_the_batches_cover_each_batch_once_in_order(count, world):
    from vqfast.train.stage_metrics import _batches
    items = [(torch.full((3, 4, 4), float(i)), i, 0) for i in range(2 * count - 1)]

    class Items(list):  # a dataset read by (index, augmentation seed)
        def __getitem__(self, key):
            return super().__getitem__(key[0])

    seen = [(b, labels.tolist()) for r in range(world) for b, _, labels in _batches(Items(items), 2, 100, r, world)]
    assert [b for b, _ in seen] == list(range(count))
    assert [i for _, labels in seen for i in labels] == list(range(2 * count - 1))


@pytest.mark.slow
@pytest.mark.parametrize("family, preset", [("maskgit", None), ("rq", "tiny-cond")], ids=["tokenizer", "model"])
def test_two_rank_eval_scores_what_one_process_scores(image_folder, tmp_path, family, preset):
    import subprocess

    from tests.train.test_distributed import TORCHRUN, _env
    common = dict(data=str(image_folder), steps=1, batch_size=2, progress=False, holdout=0.4)
    run = train(TrainConfig(family, "tokenizer", preset="tiny", out=str(tmp_path / "tok"), **common))
    if preset is not None:
        run = train(TrainConfig(family, "model", preset=preset, out=str(tmp_path / "m"), tokenizer=str(run), **common))
    torch.jit.script(InceptionStandIn()).save(str(tmp_path / "inception.pt"))
    args = ["eval", str(run), "--inception-weights", str(tmp_path / "inception.pt"), "--batch-size", "2"]
    main(args)
    one = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    two = subprocess.run([*TORCHRUN, "-m", "vqfast", *args], env=_env(), capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stdout + two.stderr
    report = json.loads((run / "metrics.json").read_text())
    assert report["images"] == one["images"] >= 3  # an odd number of batches: the ranks' shares differ
    scores = [k for k in ("psnr", "ssim", "fid", "is", "is_std", "codebook_usage", "perplexity") if k in one]
    assert {"fid", "codebook_usage"} <= set(scores) and ("is" in scores) == (preset is not None)
    assert report.keys() == one.keys()
    assert all(report[k] == pytest.approx(one[k], rel=1e-6, abs=1e-9) for k in scores), (report, one)


@pytest.mark.parametrize("kwargs, pattern", [({"batch_size": 0}, "batch_size must be a positive int"),
                                             ({"max_images": -3}, "max_images must be a positive int"),
                                             ({"sample_steps": 0}, "sample_steps must be a positive int"),
                                             ({}, "is not a training run's config")])
def test_evaluate_run_checks_its_arguments_and_the_run_config(tmp_path, kwargs, pattern):
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match=pattern):
        evaluate_run(tmp_path, **kwargs)
