"""vqddm_sample: stride 1 = the full chain, the strided posterior = a dense composition of the
skipped transitions, inpainting keeps known tokens, seeds, shapes, bad inputs; ReFiT usage."""
import pytest
import torch
import torch.nn.functional as F

from vqfast.data import make_masks
from vqfast.diffusion import CosineSchedule
from vqfast.ops import posterior_logprobs, posterior_sample
from vqfast.models.vqddm.denoiser import VQDDM
from vqfast.ops import sample_logits
from vqfast.models.vqddm.sampler import VQDDMSample, mixture_step, strided_schedule, timesteps, vqddm_sample
from vqfast import random as _random

K, S, T = 10, 4, 12


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = VQDDM.from_preset("tiny-transformer", codebook_size=K, size=S, T=T, dim=32, depth=1, heads=2, num_classes=2)
    with torch.no_grad():  # a non-trivial residual (the head starts at zero)
        m.net.head.weight.normal_(0, 0.5)
    return m.eval()


def _with_schedule(model: VQDDM, noise_schedule: str) -> VQDDM:
    """The same weights under another noise schedule."""
    other = VQDDM(**{**model.config, "noise_schedule": noise_schedule})
    other.load_state_dict(model.state_dict())
    return other.eval()


@pytest.mark.parametrize("method", ["mixture", "gumbel"])
@pytest.mark.parametrize("clip_sqrt", [False, True])
def test_stride_one_equals_full_chain(model, clip_sqrt, method):
    """The strided sampler with every timestep is the plain T-step chain on the original schedule."""
    sched = CosineSchedule(T, clip_sqrt=clip_sqrt)
    model = _with_schedule(model, "cosine-clip-sqrt" if clip_sqrt else "cosine")
    labels = torch.tensor([0, 1, 1])
    got = vqddm_sample(model, batch_size=3, steps=T, generator=7, class_labels=labels, method=method).tokens
    key = _random.philox_key(None, 7)
    z = torch.randint(K, (3, S, S), generator=torch.Generator().manual_seed(_random.step_key(key, -1) >> 1))
    with torch.no_grad():
        for t in range(T, 0, -1):
            logits = model(z, torch.full((3,), t), labels)
            if t > 1 and method == "gumbel":
                z = posterior_sample(logits, z, t, sched, seed=_random.step_key(key, t))
            elif t > 1:
                z = mixture_step(logits, z, t, sched, _random.step_key(key, t))
            else:
                z = sample_logits(logits, seed=_random.step_key(key, t))
    assert torch.equal(got, z)
    full = vqddm_sample(model, batch_size=3, generator=7, class_labels=labels, method=method)  # steps=None
    assert torch.equal(got, full.tokens) and full.history is None


@pytest.mark.parametrize("t", [2, 6, 12])
@pytest.mark.parametrize("clip_sqrt", [False, True])
def test_mixture_step_draws_the_posterior(t, clip_sqrt):
    """Frequencies of 40k mixture draws (one logits row, one z_t) match exp(posterior_logprobs)."""
    sched = CosineSchedule(T, clip_sqrt=clip_sqrt)
    g = torch.Generator().manual_seed(t)
    n = 40000
    for z_val in (0, 3):
        logits = (torch.randn(1, 1, 7, generator=g) * 2).expand(1, n, 7).contiguous()
        z = torch.full((1, n), z_val)
        out = mixture_step(logits, z, t, sched, key=t * 1000 + z_val)
        freq = torch.bincount(out.flatten(), minlength=7).double() / n
        p = posterior_logprobs(logits[:, :1], z[:, :1], t, sched).exp().flatten().double()
        # 5 standard errors of a binomial frequency
        assert torch.all((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-4), (freq, p)


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_strided_posterior_is_the_composed_transition(steps):
    """q(z_s | z_t, x0) of a jump = Bayes with the product of the skipped K x K matrices Q_j."""
    sched = CosineSchedule(T)
    taus = timesteps(T, steps)
    st = strided_schedule(sched, taus)
    eye = torch.eye(K, dtype=torch.float64)
    Q = lambda a: a * eye + (1 - a) / K  # noqa: E731
    g = torch.Generator().manual_seed(0)
    for i in range(2, st.T + 1):
        s, t = st.taus[i - 1], st.taus[i]
        jump = torch.linalg.multi_dot([Q(float(sched.alpha[j])) for j in range(s + 1, t + 1)] + [eye])
        log_x0 = torch.randn(2, 5, K, generator=g)
        z_t = torch.randint(K, (2, 5), generator=g)
        p0 = torch.softmax(log_x0.double(), -1)
        dense = jump[:, z_t].permute(1, 2, 0) * (p0 @ Q(float(sched.alpha_bar[s])))
        dense = dense / dense.sum(-1, keepdim=True)
        got = posterior_logprobs(log_x0, z_t, i, st, backend="reference").double().exp()
        torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-6)


def test_timesteps():
    assert timesteps(4000, None) == list(range(4000, 0, -1))
    taus = timesteps(4000, 100)
    assert len(taus) == 100 and taus[0] == 4000 and taus[-1] == 40 and taus == sorted(taus, reverse=True)
    assert timesteps(10, 1) == [10]
    with pytest.raises(ValueError, match="steps"):
        timesteps(10, 11)


@pytest.mark.parametrize("steps", [None, 4])
def test_inpainting_never_changes_known_tokens(model, steps):
    known = torch.randint(K, (8, S, S), generator=torch.Generator().manual_seed(1))
    kinds = ["box", "outside", "strokes", "half"]
    mask = torch.cat([make_masks(kinds[i % 4], 1, S, S, i) for i in range(6)])
    mask = torch.cat([mask, torch.ones(1, S, S, dtype=torch.bool), torch.zeros(1, S, S, dtype=torch.bool)])
    out = vqddm_sample(model, steps=steps, known=known, mask=mask, generator=3,
                       class_labels=torch.zeros(8, dtype=torch.long)).tokens
    assert out.shape == known.shape and out.dtype == torch.int64
    assert torch.equal(out[~mask], known[~mask])
    assert not torch.equal(out[mask], known[mask])  # the missing part is generated, not copied
    flat = vqddm_sample(model, steps=steps, known=known.flatten(1), mask=mask.flatten(1), generator=3,
                        class_labels=torch.zeros(8, dtype=torch.long)).tokens
    assert torch.equal(flat.view_as(out), out)


def test_seeds_and_generators(model):
    c = torch.tensor([0, 1])
    a = vqddm_sample(model, batch_size=2, steps=5, generator=1, class_labels=c).tokens
    assert torch.equal(a, vqddm_sample(model, batch_size=2, steps=5, generator=1, class_labels=c).tokens)
    assert not torch.equal(a, vqddm_sample(model, batch_size=2, steps=5, generator=2, class_labels=c).tokens)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(vqddm_sample(model, batch_size=2, steps=5, generator=g1, class_labels=c).tokens,
                       vqddm_sample(model, batch_size=2, steps=5, generator=g2, class_labels=c).tokens)
    assert a.shape == (2, S, S) and int(a.min()) >= 0 and int(a.max()) < K


@pytest.mark.parametrize("steps", [None, 5])
def test_history_holds_every_visited_map(model, steps):
    c = torch.tensor([0, 1])
    out = vqddm_sample(model, batch_size=2, steps=steps, generator=4, class_labels=c, return_history=True)
    assert isinstance(out, VQDDMSample)
    n = len(timesteps(T, steps))
    assert out.history.shape == (n + 1, 2, S, S) and out.history.dtype == torch.int64
    assert torch.equal(out.history[-1], out.tokens)
    g = torch.Generator().manual_seed(_random.step_key(_random.philox_key(4), -1) >> 1)
    assert torch.equal(out.history[0], torch.randint(K, (2, S, S), generator=g))  # z_T: uniform noise
    plain = vqddm_sample(model, batch_size=2, steps=steps, generator=4, class_labels=c)
    assert torch.equal(plain.tokens, out.tokens)


def test_sampler_bad_inputs(model):
    c = torch.tensor([0, 1])
    known = torch.randint(K, (2, S, S))
    mask = torch.ones(2, S, S, dtype=torch.bool)
    with pytest.raises(ValueError, match="known and mask"):
        vqddm_sample(model, known=known, class_labels=c)
    with pytest.raises(ValueError, match="mask must be a bool"):
        vqddm_sample(model, known=known, mask=mask.long(), class_labels=c)
    with pytest.raises(ValueError, match="batch_size=3"):
        vqddm_sample(model, batch_size=3, known=known, mask=mask, class_labels=c)
    with pytest.raises(ValueError, match="known must lie"):
        vqddm_sample(model, known=known + K, mask=mask, class_labels=c)
    with pytest.raises(ValueError, match="known must be int64"):
        vqddm_sample(model, known=torch.randint(K, (2, 3, 3)), mask=mask, class_labels=c)
    with pytest.raises(ValueError, match="known must be int64"):
        vqddm_sample(model, known=known[:0], mask=mask[:0], class_labels=c)
    with pytest.raises(ValueError, match="batch_size must"):
        vqddm_sample(model, batch_size=0, class_labels=c)
    with pytest.raises(ValueError, match="batch_size must"):
        vqddm_sample(model, class_labels=c)
    with pytest.raises(ValueError, match="steps"):
        vqddm_sample(model, batch_size=2, steps=0, class_labels=c)
    with pytest.raises(ValueError, match="class_labels"):
        vqddm_sample(model, batch_size=2)
    with pytest.raises(ValueError, match="class_labels"):
        vqddm_sample(model, batch_size=2, class_labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="method"):
        vqddm_sample(model, batch_size=2, method="ddim", class_labels=c)
    with pytest.raises(TypeError, match="generator"):
        vqddm_sample(model, batch_size=2, class_labels=c, generator="0")
    with pytest.raises(TypeError, match="model"):
        vqddm_sample(torch.nn.Linear(2, 2), batch_size=2)


def test_refit_raises_usage_and_finetune_freezes_encoder():
    from vqfast.models.vqddm.refit import finetune_decoder, refit_tokenizer
    from vqfast.models.common.vqgan import VQGAN

    class Crops:
        def __init__(self, x):
            self.x = x

        def sample(self, n, g):
            return self.x[torch.randint(len(self.x), (n,), generator=g)]

    torch.manual_seed(0)
    vq = VQGAN(resolution=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, codebook_size=32, embed_dim=8, attn=False)
    images = torch.rand(40, 3, 8, 8) * 2 - 1
    report = refit_tokenizer(vq, images, P=400, iters=20, generator=torch.Generator().manual_seed(0))
    assert report.usage_after > report.usage_before and report.usage_after >= 0.9
    assert vq.quantizer.codebook.shape == (32, 8)
    small = refit_tokenizer(vq, images, P=400, K=16, iters=20, generator=torch.Generator().manual_seed(0))
    assert vq.quantizer.codebook.shape == (16, 8) and small.usage_after >= 0.9
    enc = [p.clone() for p in vq.encoder.parameters()]
    dec = [p.clone() for p in vq.decoder.parameters()]
    log = []
    finetune_decoder(vq, Crops(images), 2, batch_size=4, lr=1e-3, generator=0, log=log)
    assert len(log) == 2 and all(p.requires_grad for p in vq.encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(enc, vq.encoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(dec, vq.decoder.parameters()))
    assert F.mse_loss(vq(images)[0], images).isfinite()
