"""VQDDM denoiser and its training objective: eq. 23 residual, sizes, the VLB against a dense
independent computation, the importance sampler's rule, a tiny model learning, bad inputs."""
import math

import pytest
import torch
import torch.nn.functional as F

from vqfast import checkpoint
from vqfast.diffusion import CosineSchedule
from vqfast.models.common.outputs import LossOutput
from vqfast.models.vqddm.objective import ImportanceSampler, prior_kl, vlb_estimate
from vqfast.models.vqddm.denoiser import VQDDM


def _tiny(backbone: str = "unet", **overrides) -> VQDDM:
    return VQDDM.from_preset("tiny" if backbone == "unet" else f"tiny-{backbone}", **overrides)


def _randomize_head(model: VQDDM, seed: int = 0) -> VQDDM:
    """Give the zero-initialized output layer random weights so the residual is not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_paper_unet_has_117m_parameters():
    with torch.device("meta"):
        model = VQDDM.from_preset("paper")
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 117e6) < 0.01 * 117e6, n
    assert model.T == 4000 and model.token_hw == (16, 16) and model.codebook_size == 1024


@pytest.mark.parametrize("backbone", ["unet", "transformer"])
def test_untrained_model_predicts_onehot_of_z_t(backbone):
    model = _tiny(backbone, codebook_size=16, size=8)
    z = torch.randint(16, (3, 8, 8))
    out = model(z, torch.tensor([1, 50, 4000]))
    assert out.shape == (3, 8, 8, 16) and out.dtype == torch.float32
    assert torch.equal(out, F.one_hot(z, 16).float())  # eq. 23 with a zero-initialized output layer


@pytest.mark.parametrize("backbone", ["unet", "transformer"])
def test_residual_time_and_class_conditioning(backbone):
    model = _randomize_head(_tiny(backbone, codebook_size=12, size=4, num_classes=3, T=100))
    z = torch.randint(12, (2, 16))
    t, c = torch.tensor([5, 5]), torch.tensor([0, 0])
    out = model(z, t, c)
    assert out.shape == (2, 16, 12)
    # the network part is out - onehot(z_t); it depends on t and on the class
    assert not torch.allclose(out, model(z, torch.tensor([90, 90]), c))
    assert not torch.allclose(out, model(z, t, torch.tensor([2, 2])))
    ref = model(z.view(2, 4, 4), t, c).reshape(2, 16, 12)
    torch.testing.assert_close(out, ref)


def test_bad_inputs():
    model = _tiny(codebook_size=8, size=4, T=10)
    z = torch.randint(8, (2, 4, 4))
    t = torch.tensor([1, 2])
    with pytest.raises(TypeError, match="z_t"):
        model(z.int(), t)
    with pytest.raises(ValueError, match="z_t"):
        model(torch.randint(8, (2, 5, 5)), t)
    with pytest.raises(ValueError, match=r"z_t must lie in \[0, K\)"):
        model(z + 8, t)
    with pytest.raises(ValueError, match="t must"):
        model(z, torch.tensor([1, 11]))
    with pytest.raises(ValueError, match="t must"):
        model(z, torch.tensor([1]))
    with pytest.raises(ValueError, match="class_labels"):
        model(z, t, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="class_labels"):
        _tiny(codebook_size=8, size=4, num_classes=2)(z, t)
    with pytest.raises(ValueError, match="backbone"):
        VQDDM(8, backbone="mlp")
    with pytest.raises(ValueError, match="codebook_size"):
        VQDDM(0)
    with pytest.raises(ValueError, match="noise_schedule"):
        VQDDM(8, noise_schedule="linear")
    with pytest.raises(TypeError, match="tokens"):
        model.loss(z.float())
    with pytest.raises(ValueError, match="tokens must be"):
        model.loss(z[:, :3])
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, K\)"):
        model.loss(z + 8)
    with pytest.raises(ValueError, match="T="):
        model.loss(z, sampler=ImportanceSampler(20))
    with pytest.raises(ValueError, match="class_labels"):
        _tiny(codebook_size=8, size=4, T=10, num_classes=2).loss(z, class_labels=torch.tensor([0, 2]))


def test_checkpoint_round_trip(tmp_path):
    model = _randomize_head(_tiny("transformer", codebook_size=8, size=4, T=10, num_classes=2,
                                  noise_schedule="cosine-clip-sqrt"))
    checkpoint.save(model, tmp_path / "ddm")
    back = checkpoint.load(tmp_path / "ddm", expected=VQDDM)
    z, t, c = torch.randint(8, (2, 4, 4)), torch.tensor([3, 7]), torch.tensor([0, 1])
    torch.testing.assert_close(model.eval()(z, t, c), back(z, t, c))
    assert back.config == model.config
    torch.testing.assert_close(back.schedule.alpha_bar, CosineSchedule(10, clip_sqrt=True).alpha_bar)


# ---- the VLB against an independent dense computation ----------------------------------

def _dense_vlb(logits, x0, z_t, t, sched, K):
    """Per-sample L_t (nats) from explicit K x K transition matrices (eqs. 16-22), float64."""
    eye = torch.eye(K, dtype=torch.float64)
    Q = lambda a: a * eye + (1 - a) / K  # noqa: E731 -- eq. 16 / 18 as a matrix
    out = []
    for b in range(x0.shape[0]):
        tb = int(t[b])
        p0 = torch.softmax(logits[b].double().reshape(-1, K), -1)
        xs, zs = x0[b].reshape(-1), z_t[b].reshape(-1)
        if tb == 1:  # decoder: -log Cat(x0 | p0)
            out.append(-torch.log(p0[torch.arange(len(xs)), xs]).sum())
            continue
        Qt, Qbar = Q(float(sched.alpha[tb])), Q(float(sched.alpha_bar[tb - 1]))
        like = Qt[:, zs].T  # [L, K]: q(z_t | z_{t-1} = k)
        q = like * (F.one_hot(xs, K).double() @ Qbar)
        q = q / q.sum(-1, keepdim=True)
        p = like * (p0 @ Qbar)
        p = p / p.sum(-1, keepdim=True)
        out.append((q * (q.log() - p.log())).sum())
    return torch.stack(out)


def test_prior_kl_matches_dense():
    K, L = 7, 5
    sched = CosineSchedule(3, clip_sqrt=True)  # the quirk keeps abar_T well above 0
    a = float(sched.alpha_bar[-1])
    q = torch.full((K,), (1 - a) / K, dtype=torch.float64)
    q[2] += a
    assert prior_kl(sched, K, L) == pytest.approx(L * float((q * (q * K).log()).sum()), rel=1e-12)
    assert prior_kl(CosineSchedule(4000), 1024, 256) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("warm", [False, True])
def test_vlb_loss_equals_dense_computation(warm):
    K, T, s = 6, 4, 4
    model = _randomize_head(_tiny("transformer", codebook_size=K, size=s, T=T, dim=32, depth=1, heads=2,
                                  noise_schedule="cosine-clip-sqrt")).eval()
    sched = model.schedule
    sampler = ImportanceSampler(T)
    if warm:
        sampler.update(torch.arange(1, T + 1).repeat(11), torch.rand(11 * T) * 10)
        assert sampler.warm
    x0 = torch.randint(K, (24, s, s), generator=torch.Generator().manual_seed(3))
    est = vlb_estimate(model, x0, sched, sampler, key=11)
    t, z_t = est.t, est.z_t
    assert (t == 1).any() and (t > 1).any()  # both the decoder term and the KL terms are exercised
    with torch.no_grad():
        L_t = _dense_vlb(model(z_t, t), x0, z_t, t, CosineSchedule(T, clip_sqrt=True), K)
    torch.testing.assert_close(est.L_t.double(), L_t, rtol=1e-4, atol=1e-4)
    prior = prior_kl(sched, K, s * s)
    expected = ((L_t / est.pt + prior).mean() / (s * s * math.log(2))).item()
    assert est.loss.item() == pytest.approx(expected, rel=1e-4)
    assert torch.allclose(est.pt, sampler.probs()[t - 1])
    # the model's loss: the same estimate from the same seed, and it records the batch in the sampler
    count = int(sampler.count.sum())
    out = model.loss(x0, generator=11, sampler=sampler)
    assert isinstance(out, LossOutput) and int(sampler.count.sum()) == count + len(t)
    torch.testing.assert_close(out.total, est.loss)
    assert out.terms["bpd"] == out.total.detach() and out.terms["prior"] == pytest.approx(prior / (s * s * math.log(2)))
    out.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---- importance sampling of t ----------------------------------------------------------

def test_importance_sampler_follows_its_rule():
    T = 5
    smp = ImportanceSampler(T)
    torch.testing.assert_close(smp.probs(), torch.full((T,), 0.2, dtype=torch.float64))
    losses = {t: [float(t * (i + 1)) for i in range(11)] for t in range(1, T + 1)}
    for i in range(10):  # 10 losses per t: still uniform (the rule needs more than 10)
        smp.update(torch.arange(1, T + 1), torch.tensor([losses[t][i] for t in range(1, T + 1)]))
    assert not smp.warm
    t, pt = smp.sample(1000, torch.Generator().manual_seed(0))
    assert torch.all(pt == 0.2) and set(t.tolist()) == set(range(1, T + 1))
    smp.update(torch.arange(1, T + 1), torch.tensor([losses[t][10] for t in range(1, T + 1)]))
    assert smp.warm
    hist = torch.zeros(T + 1, dtype=torch.float64)
    for t in range(1, T + 1):
        for v in losses[t]:
            hist[t] = 0.9 * hist[t] + 0.1 * v * v
    torch.testing.assert_close(smp.history, hist)
    w = torch.sqrt(hist[1:] + 1e-10) + 1e-4
    w[0] = w[1]  # official: the decoder term (t = 1) takes t = 2's weight
    torch.testing.assert_close(smp.probs(), w / w.sum())
    t, pt = smp.sample(200000, torch.Generator().manual_seed(1))
    freq = torch.bincount(t, minlength=T + 1)[1:].double() / len(t)
    torch.testing.assert_close(freq, smp.probs(), atol=5e-3, rtol=0)
    assert torch.allclose(pt, smp.probs()[t - 1])
    untied = ImportanceSampler(T, tie_decoder=False)
    untied.load_state_dict(smp.state_dict())
    w = torch.sqrt(hist[1:] + 1e-10) + 1e-4
    torch.testing.assert_close(untied.probs(), w / w.sum())


def test_importance_sampler_bad_inputs():
    with pytest.raises(ValueError, match="T must"):
        ImportanceSampler(0)
    smp = ImportanceSampler(4)
    with pytest.raises(ValueError, match="1..T"):
        smp.update(torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"\[B\]"):
        smp.update(torch.tensor([1, 2]), torch.tensor([1.0]))


# ---- a tiny model learns ----------------------------------------------------------------

def _exact_bpd(model, x0, sched, seed=0):
    """(sum_t L_t + prior) / (L ln 2) with every t evaluated once (one z_t draw each)."""
    B, L = x0.shape[0], x0[0].numel()
    from vqfast.models.vqddm.objective import timestep_losses
    total = torch.zeros(B, dtype=torch.float64)
    with torch.no_grad():
        for t in range(1, sched.T + 1):
            lt, _ = timestep_losses(model, x0, torch.full((B,), t), sched, key=seed * 100003 + t)
            total += lt.double()
    return float((total + prior_kl(sched, model.codebook_size, L)).mean() / (L * math.log(2)))


def test_tiny_model_loss_falls_below_bound():
    """Two fixed 4x4 maps over K = 8 codes: data entropy ~1 bit per map, so a model can get
    far below the log2(8) = 3 bits/dim of a uniform guess. Bound: < 0.6 bits/dim after 400 steps,
    where runs sit near 0.2 (at 300 they are still falling steeply, 0.48-0.63 by seed and kernel
    rounding); the untrained model, which predicts x0 = z_t, sits well above 2."""
    torch.manual_seed(0)
    K, T = 8, 20
    data = torch.stack([torch.arange(16) % K, (torch.arange(16) * 3 + 1) % K]).view(2, 4, 4)
    model = _tiny("transformer", codebook_size=K, size=4, T=T, dim=48, depth=2, heads=4)
    sched = model.schedule
    before = _exact_bpd(model, data.repeat(8, 1, 1), sched)
    sampler = ImportanceSampler(T)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        x0 = data[torch.randint(2, (16,), generator=g)]
        loss = model.loss(x0, generator=g, sampler=sampler)  # records L_t in the sampler
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    after = _exact_bpd(model.eval(), data.repeat(8, 1, 1), sched)
    assert before > 2.0, before
    assert after < 0.6, (before, after)
