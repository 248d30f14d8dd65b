"""VQ-DDM's paper settings: the t = 1 term (eq. 22 or the official code's posterior form, the
paper preset's default) checked against a hand computation, and ReFiT's fine-tuning settings
(Sec. 4.1) as finetune_decoder's defaults."""
import inspect
import math

import pytest
import torch

from vqfast.diffusion import CosineSchedule
from vqfast.models.common.vqgan import VQGAN
from vqfast.models.vqddm import VQDDM, finetune_decoder
from vqfast.models.vqddm.objective import timestep_losses
from vqfast.models.vqddm.refit import REFIT_SETTINGS


class _FixedLogits(torch.nn.Module):
    """A stand-in denoiser returning given x0 logits [B, L, K] whatever z_t is."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits, self.codebook_size = logits, logits.shape[-1]

    def forward(self, z_t, t, class_labels=None):
        return self.logits


def _t1_nll_by_hand(logits, x0, z1, alpha1, form):
    """-sum_l log p(x0 | z1) from plain softmax arithmetic, one position at a time."""
    B, L, K = logits.shape
    out = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        for l in range(L):
            x0_hat = torch.softmax(logits[b, l].double(), 0)
            if form == "posterior":  # p(z0 = k | z1) proportional to x0_hat[k] * q(z1 | z0 = k)
                q = torch.tensor([alpha1 * (z1[b, l] == k) + (1 - alpha1) / K for k in range(K)], dtype=torch.float64)
                x0_hat = x0_hat * q / (x0_hat * q).sum()
            out[b] -= math.log(x0_hat[x0[b, l]])
    return out


@pytest.mark.parametrize("form", ["eq22", "posterior"])
def test_t1_term_matches_a_hand_computation(form):
    g = torch.Generator().manual_seed(0)
    B, L, K, T = 3, 5, 7, 6
    sched = CosineSchedule(T, num_classes=K)
    logits = torch.randn(B, L, K, generator=g) * 2
    x0 = torch.randint(0, K, (B, L), generator=g)
    got, z1 = timestep_losses(_FixedLogits(logits), x0, torch.ones(B, dtype=torch.long), sched, key=3,
                              decoder_term=form)
    ref = _t1_nll_by_hand(logits, x0, z1, float(sched.alpha[1]), form)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_posterior_form_differs_from_eq22_where_z1_is_not_the_predicted_code():
    g = torch.Generator().manual_seed(1)
    sched = CosineSchedule(6, num_classes=7)
    logits, x0 = torch.randn(2, 5, 7, generator=g), torch.randint(0, 7, (2, 5), generator=g)
    t = torch.ones(2, dtype=torch.long)
    a, _ = timestep_losses(_FixedLogits(logits), x0, t, sched, key=3, decoder_term="eq22")
    b, _ = timestep_losses(_FixedLogits(logits), x0, t, sched, key=3, decoder_term="posterior")
    assert not torch.allclose(a, b)


def test_paper_preset_uses_the_official_t1_term_and_the_default_stays_eq22():
    with torch.device("meta"):
        assert VQDDM.from_preset("paper").config["decoder_term"] == "posterior"
        assert VQDDM.from_preset("tiny").config["decoder_term"] == "eq22"
    with pytest.raises(ValueError, match="decoder_term"):
        VQDDM.from_preset("tiny", decoder_term="eq21")


def test_refit_finetune_defaults_are_the_papers():
    assert REFIT_SETTINGS == dict(lr=1e-6, discriminator_lr=2e-6, batch_size=8, restart_codes=False)
    params = inspect.signature(finetune_decoder).parameters
    assert {k: params[k].default for k in REFIT_SETTINGS} == REFIT_SETTINGS


class _Crops:
    def __init__(self, x):
        self.x = x

    def sample(self, n, g):
        return self.x[torch.randint(len(self.x), (n,), generator=g)]


def _vqgan():
    torch.manual_seed(0)
    return VQGAN(resolution=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, codebook_size=64, embed_dim=8, attn=False,
                 kmeans_init=False)


@pytest.mark.parametrize("restart", [False, True])
def test_rebuilt_codes_are_not_restarted_unless_asked(restart):
    vq = _vqgan()
    book = vq.quantizer.codebook_state
    threshold = book.threshold_dead_code
    assert threshold > 0
    with torch.no_grad():  # EMA counts just above the threshold: a code unused for one step is dead
        book.cluster_size.fill_(threshold * 1.01)
        book.embed_sum.copy_(book.embed * threshold * 1.01)
    revived, revive = [], book.revive_dead
    book.revive_dead = lambda pool: revived.append(revive(pool)) or revived[-1]
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    finetune_decoder(vq, _Crops(images), 3, batch_size=2, lr=1e-3, restart_codes=restart, generator=0)
    assert len(revived) == 3 and (sum(revived) > 0) == restart  # 64 codes, 32 vectors a batch: unused ones die
    assert book.threshold_dead_code == threshold


def test_finetune_trains_the_discriminator_at_its_own_rate():
    from vqfast.models.common.losses import HingeGAN, PatchDiscriminator
    vq = _vqgan()
    torch.manual_seed(0)
    gan = HingeGAN(PatchDiscriminator(3, 8, 1))
    before = [p.clone() for p in gan.parameters()]
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    finetune_decoder(vq, _Crops(images), 2, adversarial=gan, discriminator_lr=1e-2, generator=0)
    assert any(not torch.equal(a, b) for a, b in zip(before, gan.parameters()))
    with pytest.raises(ValueError, match="discriminator_lr"):
        finetune_decoder(vq, _Crops(images), 1, discriminator_lr=0.0)
