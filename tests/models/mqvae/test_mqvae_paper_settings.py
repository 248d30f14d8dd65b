"""MQ-VAE's paper presets follow the supplement (Sec. 1, training details): no dead-code restart,
no k-means init, perceptual weight 1.0, adversarial weight 0.75; the constructor keeps vqfast's
own defaults as options, and forward weighs the terms by the config."""
import inspect

import torch
from torch import nn

from vqfast.models.mqvae import MQVAE

SUPPLEMENT = dict(threshold_dead_code=None, kmeans_init=False, perceptual_weight=1.0, adversarial_weight=0.75)


def test_paper_presets_use_the_supplements_training_settings():
    with torch.device("meta"):
        for name in ("f8", "f8_r30", "f8_official", "f16"):
            config = MQVAE.from_preset(name).config
            assert {k: config[k] for k in SUPPLEMENT} == SUPPLEMENT, name
    params = inspect.signature(MQVAE).parameters
    assert (params["threshold_dead_code"].default, params["kmeans_init"].default,
            params["adversarial_weight"].default) == (0.5, True, 1.0)


class _ConstantCritic(nn.Module):
    """generator_loss = 2 + 0 * mean(fake): a known adversarial term that keeps the graph."""

    def generator_loss(self, fake):
        return 2.0 + 0.0 * fake.mean()


class _ConstantPerceptual(nn.Module):
    def forward(self, real, fake):
        return 3.0 + 0.0 * (real - fake).mean()


def test_forward_weighs_the_terms_by_the_config():
    torch.manual_seed(0)
    vq = MQVAE.from_preset("tiny", **SUPPLEMENT).train()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    terms = vq(x, perceptual=_ConstantPerceptual(), adversarial=_ConstantCritic()).loss.terms
    assert float(terms["adversarial"]) == 0.75 * 2.0 and float(terms["perceptual"]) == 3.0
    terms = vq(x, adversarial=_ConstantCritic(), adversarial_weight=0.5).loss.terms
    assert float(terms["adversarial"]) == 0.5 * 2.0
