"""vqfast.diffusion: schedule, q_sample and the fused posterior ops on every backend
against the float64 reference oracle (vqfast/reference/diffusion.py)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import vqfast.diffusion as D
from vqfast import ops
from vqfast.diffusion.schedule import num_states
from vqfast.reference import diffusion as ref
from tests.conftest import backend_params

BACKENDS = backend_params("reference", *ops.diffusion.HAS)
FAST = backend_params(*ops.diffusion.HAS)
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]
KINDS = ["uniform", "absorbing"]
SCHED = D.CosineSchedule(50)


def make_inputs(B, L, K, kind, dtype=torch.float32, scale=3.0, seed=0, t=None):
    g = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(B, L, K, generator=g)).to(dtype)
    z = torch.randint(0, num_states(K, kind), (B, L), generator=g)
    if kind == "absorbing":  # mostly masked, some kept
        z = torch.where(torch.rand(B, L, generator=g) < 0.7, K, z)
    x0 = torch.randint(0, K, (B, L), generator=g)
    if t is None:
        t = torch.randint(1, SCHED.T + 1, (B,), generator=g)
        t[0] = 1
        t[-1] = SCHED.T
    return x, z, x0, t


# ---------------------------------------------------------------- schedule and reference

def test_cosine_schedule_eq19():
    T, s = 37, 0.008
    sched = D.CosineSchedule(T, s)
    f = [math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2 for t in range(T + 1)]
    assert sched.alpha_bar.dtype == torch.float64 and sched.alpha_bar.shape == (T + 1,)
    assert sched.alpha_bar[0] == 1.0 and sched.alpha[0] == 1.0
    torch.testing.assert_close(sched.alpha_bar, torch.tensor([v / f[0] for v in f], dtype=torch.float64),
                               atol=1e-15, rtol=1e-12)
    torch.testing.assert_close(sched.alpha[1:], sched.alpha_bar[1:] / sched.alpha_bar[:-1])
    assert torch.all(sched.alpha_bar[1:] < sched.alpha_bar[:-1]) and sched.alpha_bar[-1] < 1e-20


def test_cosine_schedule_clip_sqrt_quirk():
    sched, plain = D.CosineSchedule(20, clip_sqrt=True), D.CosineSchedule(20)
    ratio = (plain.alpha_bar[1:] / plain.alpha_bar[:-1]).clamp(0.001, 1)
    torch.testing.assert_close(sched.alpha[1:], ratio.sqrt())
    torch.testing.assert_close(sched.alpha_bar, torch.cumprod(sched.alpha, 0))


def _dense_posterior(x0_probs, zt, t, sched, K, kind):
    """Bayes with explicit transition matrices (eqs. 15-20) for one position: an independent check."""
    a, ab = float(sched.alpha[t]), float(sched.alpha_bar[t - 1])
    if kind == "uniform":
        Q = a * torch.eye(K, dtype=torch.float64) + (1 - a) / K
        Qbar = ab * torch.eye(K, dtype=torch.float64) + (1 - ab) / K
        prev = x0_probs @ Qbar
    else:
        Q = torch.zeros(K + 1, K + 1, dtype=torch.float64)
        Q[:K, :K] = a * torch.eye(K, dtype=torch.float64)
        Q[:K, K] = 1 - a
        Q[K, K] = 1
        prev = torch.cat([ab * x0_probs, torch.tensor([1 - ab], dtype=torch.float64)])
    theta = Q[:, zt] * prev
    return theta / theta.sum()


@pytest.mark.parametrize("kind", KINDS)
def test_reference_matches_dense_bayes(kind):
    K = 6
    x, z, _, t = make_inputs(3, 4, K, kind, seed=1)
    lp = ref.posterior_logprobs(x, z, t, SCHED, kind)
    for b in range(3):
        for l in range(4):
            want = _dense_posterior(torch.softmax(x[b, l].double(), -1), int(z[b, l]), int(t[b]), SCHED, K, kind)
            torch.testing.assert_close(lp[b, l].exp(), want, atol=1e-12, rtol=1e-9)


# ---------------------------------------------------------------- posterior_logprobs

def assert_logprobs_close(got, want):
    want = want.float()
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    fin = torch.isfinite(want)
    torch.testing.assert_close(got[fin], want[fin], atol=2e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", FAST)  # the reference itself: test_reference_matches_dense_bayes
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B, L, K", [pytest.param(2, 3, 2, id="K2"), pytest.param(3, 5, 1000, id="K1000"),
                                     pytest.param(2, 4, 1025, id="K1025"), pytest.param(2, 1, 16384, id="K16384")])
def test_posterior_logprobs_matches_reference(backend, dtype, kind, B, L, K):
    x, z, _, t = make_inputs(B, L, K, kind, dtype, seed=K)
    got = ops.posterior_logprobs(x, z, t, SCHED, transition=kind, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (B, L, num_states(K, kind))
    assert_logprobs_close(got, ref.posterior_logprobs(x, z, t, SCHED, kind))


@pytest.mark.parametrize("backend", FAST)  # the reference itself: test_reference_matches_dense_bayes
@pytest.mark.parametrize("kind", KINDS)
def test_posterior_logprobs_batch_dims_noncontiguous_int_t(backend, kind):
    big = torch.randn(2, 3, 8, 40, generator=torch.Generator().manual_seed(2))
    x = big[:, :, ::2, 3:36]  # [2, 3, 4, 33], not contiguous
    z = torch.randint(0, 33, (2, 3, 4))
    got = ops.posterior_logprobs(x, z, 7, SCHED, transition=kind, backend=backend)
    want = ref.posterior_logprobs(x.reshape(2, 12, 33), z.reshape(2, 12), torch.tensor([7, 7]), SCHED, kind)
    assert got.shape == (2, 3, 4, num_states(33, kind))
    assert_logprobs_close(got.reshape(2, 12, -1), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [1, 2, 50])
def test_posterior_stable_extremes(backend, kind, t):
    """t = 1, t = T, K = 16384, huge and -inf logits: finite where the oracle is, no NaN."""
    K = 16384
    x = 60.0 * torch.randn(2, 2, K, generator=torch.Generator().manual_seed(3))
    x[0, 0, 5:9000] = -torch.inf  # excluded tokens
    x[1, 1] = 0.0  # exactly uniform
    z = torch.tensor([[5, 1], [K - 1, 0]]) if kind == "uniform" else torch.tensor([[K, 1], [K, K]])
    tt = torch.tensor([t, t])
    got = ops.posterior_logprobs(x, z, tt, SCHED, transition=kind, backend=backend)
    assert not torch.isnan(got).any()
    assert_logprobs_close(got, ref.posterior_logprobs(x, z, tt, SCHED, kind))
    x0 = torch.tensor([[0, 2], [3, 4]])
    kl = ops.vlb_kl(x0, x, z, tt, SCHED, transition=kind, backend=backend)
    want = ref.vlb_kl(x0, x, z, tt, SCHED, kind).float()
    assert torch.equal(torch.isinf(kl), torch.isinf(want))
    fin = torch.isfinite(want)
    torch.testing.assert_close(kl[fin], want[fin], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- posterior_sample

@pytest.mark.parametrize("backend", FAST)  # the reference itself: test_reference_matches_dense_bayes
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B, L, K", [pytest.param(2, 6, 2, id="K2"), pytest.param(3, 7, 1000, id="K1000"),
                                     pytest.param(2, 3, 1025, id="K1025"), pytest.param(2, 1, 16384, id="K16384")])
def test_posterior_sample_same_seed_same_tokens(backend, dtype, kind, B, L, K):
    """Every backend draws exactly the reference's tokens for one seed (shared Philox noise)."""
    x, z, _, t = make_inputs(B, L, K, kind, dtype, scale=2.0, seed=K + 1)
    want = ref.posterior_sample(x, z, t, SCHED, 1234, kind)
    got = ops.posterior_sample(x, z, t, SCHED, seed=1234, transition=kind, backend=backend)
    assert got.dtype == torch.int64 and got.shape == (B, L)
    assert torch.equal(got, want)
    g1 = ops.posterior_sample(x, z, t, SCHED, torch.Generator().manual_seed(5), transition=kind, backend=backend)
    g2 = ops.posterior_sample(x, z, t, SCHED, torch.Generator().manual_seed(5), transition=kind, backend=backend)
    assert torch.equal(g1, g2)
    if kind == "absorbing":
        kept = z < K
        assert torch.equal(got[kept], z[kept])


def _chi2_check(counts, probs, fail_prob=1e-6):
    """Pearson chi-square of counts against exact probabilities; bins with expected < 5 merged."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    assert chi2 < stats.chi2.isf(fail_prob, max(1, obs.numel() - 1)), chi2


@pytest.mark.parametrize("backend", backend_params("reference", "cpu"))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [1, 10, 50])
def test_posterior_sample_distribution(backend, kind, t):
    """20000 (cpu) / 8000 (reference) draws of one position vs the exact posterior (failure probability < 1e-6)."""
    K, n = 7, 20000 if backend == "cpu" else 8000
    logits = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.5, -3.0, 0.3])
    x = logits.expand(1, n, K)
    z = torch.full((1, n), 3 if kind == "uniform" else K)
    tt = torch.tensor([t])
    draws = ops.posterior_sample(x, z, tt, SCHED, seed=99, transition=kind, backend=backend)
    probs = ref.posterior_logprobs(x[:, :1], z[:, :1], tt, SCHED, kind)[0, 0].exp()
    counts = torch.bincount(draws.reshape(-1), minlength=probs.numel()).double()
    _chi2_check(counts, probs)


def _hard_posterior_rows(K=600):
    """Rows the mixture sampler must get right: z_t dominant, z_t excluded (-inf), an empty
    proposal block, a huge range, all ties, a single finite state, a full block whose float32
    sum overflows (the CPU scan's fast-path check)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, K, generator=g)
    z = torch.tensor([5, 300, 100, 599, 17, 42, 3])
    x[0, 5] = 40.0
    x[1, 300] = float("-inf")
    x[2, 256:512] = float("-inf")
    x[3] *= 1e3
    x[4] = 0.0
    x[5] = float("-inf")
    x[5, 42] = 1.0
    x[6, :256] = 3e37 + x[6, :256].abs() * 1e37
    x[6, 3] = 3.1e37
    return x[None], z[None]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [1, 2, 25, 50])
def test_posterior_sample_hard_rows_same_tokens(backend, kind, t):
    x, z = _hard_posterior_rows()
    if kind == "absorbing":
        z[0, ::2] = x.shape[-1]  # masked positions; the others are kept
    tt = torch.tensor([t])
    for seed in (0, 7, 2 ** 64 - 1):
        want = ref.posterior_sample(x, z, tt, SCHED, seed, kind)
        got = ops.posterior_sample(x, z, tt, SCHED, seed=seed, transition=kind, backend=backend)
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", backend_params("reference", "cpu"))
@pytest.mark.parametrize("t", [2, 25])
def test_posterior_sample_distribution_multiblock(backend, t):
    """Several proposal blocks, an empty one, z_t's logit excluded or dominant: exact posterior."""
    x, z = _hard_posterior_rows()
    n = 20000 if backend == "cpu" else 6000
    for r in (1, 2):
        xr = x[:, r].expand(1, n, x.shape[-1])
        zr = z[:, r].expand(1, n)
        tt = torch.tensor([t])
        draws = ops.posterior_sample(xr, zr, tt, SCHED, seed=11, backend=backend)
        probs = ref.posterior_logprobs(xr[:, :1], zr[:, :1], tt, SCHED)[0, 0].exp()
        _chi2_check(torch.bincount(draws.reshape(-1), minlength=probs.numel()).double(), probs)


# ---------------------------------------------------------------- vlb_kl

@pytest.mark.parametrize("backend", FAST)  # the reference itself: test_reference_matches_dense_bayes
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B, L, K", [pytest.param(2, 5, 2, id="K2"), pytest.param(3, 4, 1000, id="K1000"),
                                     pytest.param(2, 3, 1025, id="K1025"), pytest.param(2, 1, 16384, id="K16384")])
def test_vlb_kl_and_grad_match_reference(backend, dtype, kind, B, L, K):
    x, z, x0, t = make_inputs(B, L, K, kind, dtype, scale=2.0, seed=K + 2)
    if kind == "uniform":
        z[:, 0] = x0[:, 0]  # z_t == x0 exercises the merged special states
    upstream = torch.randn(B, L, generator=torch.Generator().manual_seed(4))
    xr = x.detach().double().requires_grad_(True)
    want = ref.vlb_kl(x0, xr, z, t, SCHED, kind)
    (want_grad,) = torch.autograd.grad(want, xr, upstream.double())
    xg = x.detach().clone().requires_grad_(True)
    got = ops.vlb_kl(x0, xg, z, t, SCHED, transition=kind, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (B, L)
    torch.testing.assert_close(got, want.float(), atol=2e-5, rtol=1e-4)
    (got_grad,) = torch.autograd.grad(got, xg, upstream)
    assert got_grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got_grad.double(), want_grad, atol=tol * (1 + float(want_grad.abs().max())), rtol=tol)


@pytest.mark.parametrize("backend", backend_params("cpu"))
@pytest.mark.parametrize("kind", KINDS)
def test_vlb_kl_large_gradient_buffers(backend, kind):
    """Gradients of 4 MB and more come from the CPU kernel's huge-page pool: twice in a row
    (the second reuses the first's freed buffer), T = 4000 with t = 1, 2, T - 1, T, and rows
    with -inf entries, a whole -inf block, a dominant logit and peaked logits."""
    sched = D.CosineSchedule(4000)
    B, L, K = 4, 17, 16384
    g = torch.Generator().manual_seed(21)
    x = 2.0 * torch.randn(B, L, K, generator=g)
    x[1, 1, :300] = -torch.inf  # (at t = 1 the float64 reference gives NaN gradients for -inf logits)
    x[1, 2, 5] = 60.0
    x[2, 3] *= 40.0
    x[3, 4, 7:9000] = -torch.inf
    z = torch.randint(0, num_states(K, kind), (B, L), generator=g)
    x0 = torch.randint(0, K, (B, L), generator=g)
    x0[3, 4] = 8
    if kind == "absorbing":
        z[:, ::2] = K
    else:
        z[:, 0] = x0[:, 0]
    t = torch.tensor([1, 2, 3999, 4000])
    upstream = torch.randn(B, L, generator=g)
    xr = x.double().requires_grad_(True)
    want = ref.vlb_kl(x0, xr, z, t, sched, kind)
    (want_grad,) = torch.autograd.grad(want, xr, upstream.double())
    for _ in range(2):
        xg = x.clone().requires_grad_(True)
        got = ops.vlb_kl(x0, xg, z, t, sched, transition=kind, backend=backend)
        torch.testing.assert_close(got, want.float(), atol=2e-5, rtol=1e-4)
        (got_grad,) = torch.autograd.grad(got, xg, upstream)
        assert torch.isfinite(got_grad).all()
        torch.testing.assert_close(got_grad.double(), want_grad, atol=1e-5 * (1 + float(want_grad.abs().max())),
                                   rtol=1e-5)
        del xg, got, got_grad


def _logprobs_grad_want(x, z, t, kind, upstream, sched=SCHED):
    """Autograd through the float64 reference; -inf outputs carry no gradient (as in the op)."""
    xr = x.detach().double().requires_grad_(True)
    out = ref.posterior_logprobs(xr, z, t, sched, kind)
    out = torch.where(torch.isfinite(out), out, torch.zeros_like(out))
    (want,) = torch.autograd.grad(out, xr, upstream.double())
    return want


@pytest.mark.parametrize("backend", FAST)  # the reference itself: test_reference_matches_dense_bayes
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B, L, K", [pytest.param(2, 5, 2, id="K2"), pytest.param(3, 4, 1000, id="K1000"),
                                     pytest.param(2, 3, 1025, id="K1025"), pytest.param(2, 2, 16384, id="K16384")])
def test_posterior_logprobs_grad_matches_reference(backend, dtype, kind, B, L, K):
    """The fused CPU backward (and the others) against autograd through the reference, t = 1 and T included."""
    x, z, _, t = make_inputs(B, L, K, kind, dtype, scale=2.0, seed=K + 5)
    x[-1, 0, : K // 2] = -torch.inf  # excluded tokens (at t = 1 the reference's own gradient is NaN there)
    x[-1, -1, K - 1] = 30.0  # a dominant token
    if kind == "uniform":
        z[-1, -1] = K - 1
    else:  # a kept z_t with an excluded logit: the reference's gradient is NaN (the op's is 0)
        z[-1, 0] = K
    Ks = num_states(K, kind)
    upstream = torch.randn(B, L, 2 * Ks, generator=torch.Generator().manual_seed(6))[..., ::2]  # non-contiguous
    want = _logprobs_grad_want(x, z, t, kind, upstream)
    xg = x.detach().clone().requires_grad_(True)
    out = ops.posterior_logprobs(xg, z, t, SCHED, transition=kind, backend=backend)
    (got,) = torch.autograd.grad(out, xg, upstream)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.double(), want, atol=tol * (1 + float(want.abs().max())), rtol=tol)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", KINDS)
def test_posterior_logprobs_backward_is_fused(backend, kind, monkeypatch):
    """The fast backends' backward runs their own kernel, never autograd through the reference."""
    x, z, _, t = make_inputs(2, 3, 77, kind, seed=21)
    upstream = torch.randn(2, 3, num_states(77, kind), generator=torch.Generator().manual_seed(1))
    want = _logprobs_grad_want(x, z, t, kind, upstream)
    xg = x.clone().requires_grad_(True)
    out = ops.posterior_logprobs(xg, z, t, SCHED, transition=kind, backend=backend)
    monkeypatch.setattr(ref, "posterior_logprobs", lambda *a, **k: pytest.fail("reference ran in the backward"))
    (got,) = torch.autograd.grad(out, xg, upstream)
    torch.testing.assert_close(got.double(), want, atol=1e-5 * (1 + float(want.abs().max())), rtol=1e-5)


@pytest.mark.parametrize("backend", FAST)
def test_posterior_logprobs_grad_large_schedule(backend):
    """T = 4000 at t = 1, 2, T - 1, T (ab near 1 and near 0), uniform and absorbing."""
    sched = D.CosineSchedule(4000)
    for kind in KINDS:
        x, z, _, _ = make_inputs(4, 3, 300, kind, scale=4.0, seed=13)
        t = torch.tensor([1, 2, 3999, 4000])
        upstream = torch.randn(4, 3, num_states(300, kind), generator=torch.Generator().manual_seed(2))
        want = _logprobs_grad_want(x, z, t, kind, upstream, sched)
        xg = x.clone().requires_grad_(True)
        (got,) = torch.autograd.grad(ops.posterior_logprobs(xg, z, t, sched, transition=kind, backend=backend), xg,
                                     upstream)
        torch.testing.assert_close(got.double(), want, atol=1e-5 * (1 + float(want.abs().max())), rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vlb_kl_at_t1_is_decoder_nll(backend):
    x, z, x0, _ = make_inputs(2, 6, 50, "uniform", seed=8)
    t = torch.tensor([1, 1])
    kl = ops.vlb_kl(x0, x, z, t, SCHED, backend=backend)
    lp = ref.posterior_logprobs(x, z, t, SCHED)
    torch.testing.assert_close(kl, -lp.gather(-1, x0[..., None])[..., 0].float(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_vlb_kl_zero_when_prediction_is_truth(backend, kind):
    K = 30
    _, z, x0, t = make_inputs(2, 5, K, kind, seed=9)
    perfect = torch.full((2, 5, K), -1e4).scatter_(-1, x0[..., None], 0.0)
    kl = ops.vlb_kl(x0, perfect, z, t, SCHED, transition=kind, backend=backend)
    torch.testing.assert_close(kl, torch.zeros_like(kl), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- q_sample

@pytest.mark.parametrize("kind", KINDS)
def test_q_sample_distribution_and_reproducibility(kind):
    K, n, t = 5, 20000, 30
    sched = D.CosineSchedule(50, num_classes=K)
    z0 = torch.full((1, n), 2)
    zt = D.q_sample(z0, torch.tensor([t]), sched, torch.Generator().manual_seed(0), transition=kind)
    assert torch.equal(zt, D.q_sample(z0, t, sched, torch.Generator().manual_seed(0), transition=kind))
    ab = float(sched.alpha_bar[t])
    if kind == "uniform":
        probs = torch.full((K,), (1 - ab) / K, dtype=torch.float64)
        probs[2] += ab
    else:
        probs = torch.zeros(K + 1, dtype=torch.float64)
        probs[2], probs[K] = ab, 1 - ab
    _chi2_check(torch.bincount(zt.reshape(-1), minlength=probs.numel()).double(), probs)
    assert torch.equal(D.q_sample(z0, 0, sched, seed=1, transition=kind), z0)  # t = 0: no noise


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_clear_errors(backend):
    K = 9
    x, z, x0, t = make_inputs(2, 3, K, "uniform", seed=5)
    lp = ops.posterior_logprobs
    with pytest.raises(ValueError, match="t must lie in 1..T"):
        lp(x, z, torch.tensor([0, 3]), SCHED, backend=backend)
    with pytest.raises(ValueError, match="t must lie in 1..T"):
        ops.posterior_sample(x, z, torch.tensor([1, SCHED.T + 1]), SCHED, seed=0, backend=backend)
    with pytest.raises(ValueError, match="t must have shape"):
        lp(x, z, torch.tensor([1, 2, 3]), SCHED, backend=backend)
    with pytest.raises(TypeError, match="t must be an integer tensor"):
        lp(x, z, torch.tensor([1.0, 2.0]), SCHED, backend=backend)
    with pytest.raises(ValueError, match="z_t must be in"):
        lp(x, torch.full_like(z, K), t, SCHED, backend=backend)
    with pytest.raises(ValueError, match="z_t must be in"):
        lp(x, torch.full_like(z, -1), t, SCHED, backend=backend)
    with pytest.raises(TypeError, match="z_t must have dtype"):
        lp(x, z.int(), t, SCHED, backend=backend)
    with pytest.raises(ValueError, match="z_t must have shape"):
        lp(x, z[:, :2], t, SCHED, backend=backend)
    with pytest.raises(TypeError, match="log_x0 must have dtype"):
        lp(x.double(), z, t, SCHED, backend=backend)
    with pytest.raises(TypeError, match="schedule must be"):
        lp(x, z, t, "cosine", backend=backend)
    with pytest.raises(ValueError, match="transition must be"):
        lp(x, z, t, SCHED, transition="mask", backend=backend)
    with pytest.raises(ValueError, match="x0 must be in"):
        ops.vlb_kl(torch.full_like(x0, K), x, z, t, SCHED, backend=backend)
    bad = x.clone()
    bad[1, 2, 4] = float("nan")
    for fn in (lambda v: lp(v, z, t, SCHED, backend=backend),
               lambda v: ops.posterior_sample(v, z, t, SCHED, seed=0, backend=backend),
               lambda v: ops.vlb_kl(x0, v, z, t, SCHED, backend=backend)):
        with pytest.raises(ValueError, match=r"log_x0.* NaN .*first at \(1, 2\)"):
            fn(bad)
    with pytest.raises(ValueError, match="num_classes"):
        D.q_sample(x0, t, SCHED, seed=0)
    with pytest.raises(ValueError, match="T must be"):
        D.CosineSchedule(0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_position_dims_raise_clear_errors(backend):
    """A zero-size dim between B and K (no positions) is a ValueError naming log_x0 on every backend."""
    x, z = torch.randn(2, 0, 5), torch.zeros(2, 0, dtype=torch.long)
    t = torch.tensor([1, 3])
    calls = (lambda: ops.posterior_logprobs(x, z, t, SCHED, backend=backend),
             lambda: ops.posterior_sample(x, z, t, SCHED, seed=0, backend=backend),
             lambda: ops.vlb_kl(z, x, z, t, SCHED, backend=backend))
    for call in calls:
        with pytest.raises(ValueError, match=r"log_x0 must be \[B, \.\.\., K\] with every size >= 1"):
            call()


def test_q_sample_token_range_at_the_largest_num_classes():
    """The uniform tokens lie in [0, K) up to K = 2^31; a larger K is a ValueError (was: negative tokens)."""
    sched = D.CosineSchedule(10)
    z0 = torch.zeros(1, 4096, dtype=torch.long)
    zt = D.q_sample(z0, 10, sched, seed=0, num_classes=1 << 31)
    assert zt.min() >= 0 and zt.max() < 1 << 31 and zt.max() >= 1 << 30
    with pytest.raises(ValueError, match="num_classes must be <= 2\\^31"):
        D.q_sample(z0, 10, sched, seed=0, num_classes=(1 << 31) + 1)



def test_numpy_integer_timestep():
    """t may be a numpy integer, as an int (was 't must be an int or an int64 tensor, got int64')."""
    x, z, _, _ = make_inputs(2, 3, 7, "uniform", seed=1)
    torch.testing.assert_close(ops.posterior_logprobs(x, z, np.int64(4), SCHED), ops.posterior_logprobs(x, z, 4, SCHED))
    zt = D.q_sample(z, np.int32(3), SCHED, seed=0, num_classes=7)
    assert torch.equal(zt, D.q_sample(z, 3, SCHED, seed=0, num_classes=7))
    with pytest.raises(TypeError, match="t must be an int"):
        ops.posterior_logprobs(x, z, np.bool_(True), SCHED)
