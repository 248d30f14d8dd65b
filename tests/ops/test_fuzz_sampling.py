"""Fuzz of the token samplers (gumbel_topk_select, select_and_sample_topk, sample_logits) and the
diffusion ops (posterior_logprobs and its backward, posterior_sample, vlb_kl and its backward)
against the reference backend, on seeded random cases (tests/ops/fuzz_cases.py): odd sizes,
exact ties, -inf runs, signed zeros, NaN/inf rows, fp16/bf16, non-contiguous inputs.

Rules (those of test_sampling and test_diffusion): tokens, positions, reveals, confidences and
posterior draws exactly (every backend draws the same counter-based noise and applies one
log-softmax rule, vqfast/reference/sampling.py `log_normalizer`); log-probs to 2e-4 with the same
-inf entries; gradients to 1e-5 (fp32) or 1e-2 of their largest entry. Where the
reference raises ValueError (NaN/+inf or all -inf rows), the kernel must raise it too.
"""
import pytest
import torch

import vqfast
import vqfast.diffusion as D
from vqfast.diffusion.schedule import num_states
from tests.ops.fuzz_cases import DTYPES, PATTERNS, Case, examples
from tests.ops.test_diffusion import assert_logprobs_close

LOGIT_PATTERNS = PATTERNS + ("neg_inf_runs",)
SCHED = D.CosineSchedule(30)


def _both(backend, fn):
    """(fn(backend), fn("reference")), or (None, None) after checking both raise ValueError."""
    try:
        want = fn("reference")
    except ValueError:
        with pytest.raises(ValueError):
            fn(backend)
        return None, None
    return fn(backend), want


def _logits(c, shape, nan_p=0.2):
    pattern = c.pick(LOGIT_PATTERNS)
    x = c.floats(shape, c.pick(DTYPES), "plain" if pattern == "neg_inf_runs" else pattern)
    if pattern == "neg_inf_runs":
        x = c.neg_inf_runs(x)
    if c.chance(nan_p):
        x, _ = c.nan_rows(x, 0.2)
    return x


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_gumbel_topk_select(backend, i):
    c = Case("gumbel_topk_select", i, backend)
    B, L, V = c.int(1, 3, 2), c.int(1, 12, 3), c.int(1, 300, 40)
    logits = _logits(c, (B, L, V))
    masked = torch.rand(B, L, generator=c.g) < 0.7
    n = torch.tensor([c.int(0, int(m)) for m in masked.sum(1)])
    banned = torch.randperm(V, generator=c.g)[:c.int(0, V - 1)] if V > 1 and c.chance(0.4) else None
    tau, choice = c.pick((0.0, 0.5, 4.5)), c.pick(("argmax", "sample"))
    got, want = _both(backend, lambda b: vqfast.ops.gumbel_topk_select(
        c.layout(logits), masked, n, tau, choice, banned, seed=i, backend=b))
    if got is None:
        return
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(got.confidence, want.confidence)
    assert torch.equal(got.reveal, want.reveal)


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_select_and_sample_topk(backend, i):
    c = Case("select_and_sample_topk", i, backend)
    B, L, V = c.int(1, 3, 2), c.int(1, 12, 3), c.int(1, 300, 40)
    logits = _logits(c, (B, L, V))
    known = torch.rand(B, L, generator=c.g) < 0.4
    top_k, n_pos, temperature = c.int(1, V + 2), c.int(1, L + 2), c.pick((0.3, 1.0, 2.0))
    got, want = _both(backend, lambda b: vqfast.ops.select_and_sample_topk(
        c.layout(logits), known, top_k, n_pos, temperature, seed=i, backend=b))
    if got is None:
        return
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_sample_logits(backend, i):
    c = Case("sample_logits", i, backend)
    lead = c.pick(((), (c.int(1, 9, 3),), (2, c.int(1, 5, 2))))
    V = c.int(1, 300, 40)
    logits = _logits(c, (*lead, V))
    temperature = c.pick((0.0, 0.7, 1.0, 1.5))
    top_k = c.int(1, V + 2) if c.chance(0.5) else None
    top_p = c.pick((1e-3, 0.1, 0.5, 0.9, 1.0)) if c.chance(0.5) else None
    guide = dict(cfg_scale=c.pick((0.0, 1.0, 2.5, -1.0)), uncond_logits=c.floats(logits.shape, logits.dtype, "plain")
                 ) if c.chance(0.3) else {}
    got, want = _both(backend, lambda b: vqfast.ops.sample_logits(
        c.layout(logits), temperature, top_k, top_p, generator=i, backend=b, **guide))
    if got is None:
        return
    assert got.shape == logits.shape[:-1]
    assert torch.equal(got, want)  # the nucleus rule is exact on every backend (reference `_nucleus`)


def _diffusion_case(name, i, backend):
    c = Case(name, i, backend)
    kind = c.pick(("uniform", "absorbing"))
    B, L, K = c.int(1, 3, 2), c.int(1, 6, 3), c.int(1, 300, 40)
    shape = (B, L) if c.chance(0.7) else (B, 2, L)
    x = _logits(c, (*shape, K), nan_p=0.15)
    z = torch.randint(0, num_states(K, kind), shape, generator=c.g)
    if kind == "absorbing":
        z = torch.where(torch.rand(shape, generator=c.g) < 0.6, K, z)
    t = torch.tensor([c.pick((1, c.int(1, SCHED.T), SCHED.T)) for _ in range(B)])
    return c, kind, c.layout(x), z, t


def _grad_tol(dtype, want):
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    return dict(atol=tol * (1 + float(want.abs().max())) if want.numel() else tol, rtol=tol)


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_posterior_logprobs_and_backward(backend, i):
    c, kind, x, z, t = _diffusion_case("posterior_logprobs", i, backend)
    leaves = {}

    def run(b):
        leaves[b] = x.detach().clone().requires_grad_()
        return vqfast.ops.posterior_logprobs(leaves[b], z, t, SCHED, transition=kind, backend=b)

    got, want = _both(backend, run)
    if got is None:
        return
    assert_logprobs_close(got.detach(), want.detach())
    up = torch.randn(got.shape, generator=c.g)
    grads = [torch.autograd.grad(torch.where(torch.isfinite(o), o, 0.0), leaves[b], up)[0]
             for o, b in ((got, backend), (want, "reference"))]
    torch.testing.assert_close(grads[0].double(), grads[1].double(), **_grad_tol(x.dtype, grads[1]))


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_posterior_sample(backend, i):
    _, kind, x, z, t = _diffusion_case("posterior_sample", i, backend)
    got, want = _both(backend, lambda b: vqfast.ops.posterior_sample(x, z, t, SCHED, seed=i, transition=kind, backend=b))
    if got is not None:
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend, i", examples())
def test_fuzz_vlb_kl_and_backward(backend, i):
    c, kind, x, z, t = _diffusion_case("vlb_kl", i, backend)
    K = x.shape[-1]
    x0 = torch.randint(0, K, z.shape, generator=c.g)
    leaves = {}

    def run(b):
        leaves[b] = x.detach().clone().requires_grad_()
        return vqfast.ops.vlb_kl(x0, leaves[b], z, t, SCHED, transition=kind, backend=b)

    got, want = _both(backend, run)
    if got is None:
        return
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    if not bool(torch.isfinite(want).all()):
        return  # an x0 ruled out by -inf logits: infinite loss, no gradient to compare
    up = torch.randn(got.shape, generator=c.g)
    grads = [torch.autograd.grad(o, leaves[b], up)[0] for o, b in ((got, backend), (want, "reference"))]
    torch.testing.assert_close(grads[0].double(), grads[1].double(), **_grad_tol(x.dtype, grads[1]))
