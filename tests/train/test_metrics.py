"""vqfast.train.metrics on known inputs, the FID path on a random-weight feature network against
the closed-form Frechet distance, and `python -m vqfast eval` on a trained run."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import linalg

from vqfast.__main__ import main
from vqfast.train import TrainConfig, train
from vqfast.train.metrics import FID, FID_HINT, codebook_stats, inception_features, psnr_ssim


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


def test_eval_command_scores_a_tokenizer_run(image_folder, tmp_path, capsys):
    run = train(TrainConfig("maskgit", "tokenizer", data=str(image_folder), preset="tiny", out=str(tmp_path / "r"),
                            steps=1, batch_size=2, progress=False, holdout=0.3))
    scripted = torch.jit.script(RandomFeatures())
    scripted.save(str(tmp_path / "features.pt"))
    main(["eval", str(run), "--inception-weights", str(tmp_path / "features.pt"), "--batch-size", "2"])
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((run / "metrics.json").read_text())
    assert report["images"] >= 2 and 0 < report["psnr"] < 60 and -1 <= report["ssim"] <= 1
    assert 0 < report["codebook_usage"] <= 1 and report["perplexity"] >= 1 and report["fid"] >= 0
    main(["eval", str(run)])
    out = capsys.readouterr().out
    assert "FID skipped: pass --inception-weights" in out and '"fid"' not in out
