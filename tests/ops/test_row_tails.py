"""Row tails of the CPU kernels with AVX-512 masked loads and stores (a 256-logit block and
16-lane vectors; the sanitizers cannot see past a masked tail): every row length modulo 16,
within the first block and across the block boundary, against the reference; and full
blocks tied at their max."""
import pytest
import torch

import vqfast
import vqfast.diffusion as D
from tests.conftest import available

pytestmark = pytest.mark.skipif(not available("cpu"), reason="cpu backend not available")

LENGTHS = list(range(1, 18)) + list(range(254, 274))  # every V mod 16, in one block and past 256
SCHED = D.CosineSchedule(20)


def _logits(shape, seed):
    return 3 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _both(fn):
    return fn("cpu"), fn("reference")


@pytest.mark.parametrize("V", LENGTHS)
def test_sample_logits_tails(V):
    x = _logits((6, V), V)
    for kw in ({"temperature": 0.0}, {}, {"top_k": max(1, V // 3)}, {"top_p": 0.6},
               {"top_k": max(1, V // 2), "top_p": 0.8}):
        got, want = _both(lambda b: vqfast.ops.sample_logits(x, seed=V, backend=b, **kw))
        assert torch.equal(got, want), kw


@pytest.mark.parametrize("V", LENGTHS)
@pytest.mark.parametrize("choice", ["argmax", "sample"])
def test_gumbel_topk_select_tails(V, choice):
    x = _logits((2, 5, V), V)
    masked = torch.tensor([[True, False, True, True, False], [True] * 5])
    got, want = _both(lambda b: vqfast.ops.gumbel_topk_select(x, masked, 2, 1.5, choice, seed=V, backend=b))
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.reveal, want.reveal)
    assert torch.equal(got.confidence, want.confidence)


@pytest.mark.parametrize("V", LENGTHS)
def test_select_and_sample_topk_tails(V):
    x = _logits((2, 6, V), V)
    known = torch.zeros(2, 6, dtype=torch.bool)
    known[0, 1] = True
    for top_k in (1, max(1, V // 4), V):
        got, want = _both(lambda b: vqfast.ops.select_and_sample_topk(x, known, top_k, 3, 0.9, seed=V, backend=b))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), top_k


@pytest.mark.parametrize("K", LENGTHS)
@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_diffusion_tails(K, kind):
    g = torch.Generator().manual_seed(K)
    x = _logits((2, 4, K), K).requires_grad_()
    states = K + (kind == "absorbing")
    z = torch.randint(0, states, (2, 4), generator=g)
    x0 = torch.randint(0, K, (2, 4), generator=g)
    t = torch.tensor([1, 7])
    got, want = _both(lambda b: vqfast.ops.posterior_sample(x.detach(), z, t, SCHED, seed=K, transition=kind, backend=b))
    assert torch.equal(got, want)
    got, want = _both(lambda b: vqfast.ops.posterior_logprobs(x.detach(), z, t, SCHED, transition=kind, backend=b))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    kl, grads = {}, {}
    for b in ("cpu", "reference"):
        x.grad = None
        kl[b] = vqfast.ops.vlb_kl(x0, x, z, t, SCHED, transition=kind, backend=b)
        kl[b].sum().backward()
        grads[b] = x.grad.clone()
    torch.testing.assert_close(kl["cpu"], kl["reference"].float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads["cpu"], grads["reference"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("d", list(range(1, 18)) + [31, 32, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ema_statistics_tails(d, dtype):
    g = torch.Generator().manual_seed(d)
    x = torch.randn(40, d, generator=g).to(dtype)
    idx = torch.randint(0, 5, (40,), generator=g)
    got, want = _both(lambda b: vqfast.ops.ema_statistics(x, idx, 5, backend=b))
    torch.testing.assert_close(got[0], want[0].float())
    torch.testing.assert_close(got[1], want[1].float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("V", [256, 300, 512])
def test_gumbel_topk_select_sample_blocks_tied_at_max(V):
    """All-zero logits: every 256-block is tied at its max, so its in-block weight sum is
    256 (2^23 + 1), past 2^31 (summed in unsigned arithmetic)."""
    x = torch.zeros(2, 4, V)
    masked = torch.ones(2, 4, dtype=torch.bool)
    for seed in (0, 5, 2 ** 64 - 1):
        got, want = _both(lambda b: vqfast.ops.gumbel_topk_select(x, masked, 2, 1.0, "sample", seed=seed, backend=b))
        assert torch.equal(got.tokens, want.tokens) and torch.equal(got.reveal, want.reveal)
        assert torch.equal(got.confidence, want.confidence)
