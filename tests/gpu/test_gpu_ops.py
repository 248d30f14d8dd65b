"""Every op on CUDA tensors, for each GPU backend built there (Triton compiled for the device, the
CUDA extension), against the float64 reference on the CPU: indices exact where the reference's
best-vs-second margin is clear, values within the CPU tests' tolerances, and the counter-based
draws (Philox) equal to the CPU kernel's for the same key.

Runs where CUDA is present (`benchmarks/gpu_check.py` step 1); skipped elsewhere, unless
VQFAST_GPU_TESTS_ON_CPU=1 runs the same checks on CPU tensors (Triton under its interpreter), which
checks the tests themselves.
"""
import os

import pytest
import torch

import vqfast
from vqfast import ops
from vqfast.diffusion import CosineSchedule
from vqfast.ops import posterior_logprobs, posterior_sample, vlb_kl

ON_CPU = os.environ.get("VQFAST_GPU_TESTS_ON_CPU") == "1"
DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEV == "cpu" and not ON_CPU, reason="needs a CUDA device (or VQFAST_GPU_TESTS_ON_CPU=1)")

GPU = [pytest.param(b, id=b) for b in ("triton", "cuda")]
DTYPES = [pytest.param(torch.float32, 1e-4, id="fp32"), pytest.param(torch.float16, 2e-2, id="fp16"),
          pytest.param(torch.bfloat16, 5e-2, id="bf16")]
SIZES = [(1, 1, 3), (257, 33, 17), (4099, 1031, 64)]


def need(backend: str, has: tuple[str, ...]):
    if backend not in has:
        pytest.skip(f"the op has no {backend} kernel")
    if not vqfast.backends()[backend]["available"]:
        pytest.skip(f"{backend}: {vqfast.backends()[backend]['detail']}")


def data(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def l2_margin(x, cb):
    """float64 squared distances [N, K] of the dtype-rounded inputs, the best index, and whether the
    margin to the second best is clear (> 1e-3 relative)."""
    d = torch.cdist(x.double(), cb.double()) ** 2
    two = d.topk(min(2, d.shape[1]), largest=False).values
    clear = (two[:, -1] - two[:, 0]) > 1e-3 * two[:, 0].abs().clamp_min(1.0) if d.shape[1] > 1 else torch.ones(
        len(d), dtype=torch.bool)
    return d, d.argmin(1), clear


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("N, K, d", SIZES)
def test_nearest_code_and_quantize(backend, dtype, tol, N, K, d):
    from vqfast.ops.nearest_code import HAS
    need(backend, HAS)
    x, cb = data(N, d, dtype=dtype), data(K, d, seed=1, dtype=dtype)
    dist64, best, clear = l2_margin(x, cb)
    idx, dist = ops.nearest_code(x.to(DEV), cb.to(DEV), backend=backend)
    idx, dist = idx.cpu(), dist.cpu()
    assert torch.equal(idx[clear], best[clear])
    chosen = dist64.gather(1, idx[:, None])[:, 0]
    torch.testing.assert_close(chosen, dist64.min(1).values, rtol=tol, atol=tol)
    torch.testing.assert_close(dist.double(), chosen, rtol=tol, atol=tol)
    z_q, qidx, _ = ops.quantize(x.to(DEV), cb.to(DEV), backend=backend)
    assert torch.equal(qidx.cpu(), idx)
    assert torch.equal(z_q.cpu(), cb[idx])


@pytest.mark.parametrize("backend", GPU)
def test_residual_quantize(backend):
    from vqfast.ops.residual import HAS
    need(backend, HAS)
    x, cb = data(1000, 32), data(513, 32, seed=1)
    ref = ops.residual_quantize(x, cb, 4, backend="reference")
    got = ops.residual_quantize(x.to(DEV), cb.to(DEV), 4, backend=backend)
    assert (got.indices.cpu() == ref.indices).float().mean() > 0.99  # deeper levels see rounding-level residuals
    assert torch.equal(got.indices.cpu()[:, 0], ref.indices[:, 0])


@pytest.mark.parametrize("backend", GPU)
def test_ema_statistics(backend):
    from vqfast.ops.ema import HAS
    need(backend, HAS)
    x = data(5003, 37)
    idx = torch.randint(0, 129, (5003,), generator=torch.Generator().manual_seed(2))
    counts, sums = ops.ema_statistics(x.to(DEV), idx.to(DEV), 129, backend=backend)
    rc, rs = ops.ema_statistics(x, idx, 129, backend="reference")
    assert torch.equal(counts.cpu(), rc)
    torch.testing.assert_close(sums.cpu(), rs, rtol=1e-5, atol=1e-4)


def _logits(B, L, V, seed=0):
    return data(B, L, V, seed=seed) * 3


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("kw", [{}, {"top_k": 50}, {"top_p": 0.9}, {"temperature": 0.0}], ids=str)
def test_sample_logits_draws_the_cpu_kernels_tokens(backend, kw):
    from vqfast.ops.sampling import HAS
    need(backend, HAS)
    x = _logits(4, 33, 1031)
    cpu = ops.sample_logits(x, seed=7, backend="cpu", **kw)
    gpu = ops.sample_logits(x.to(DEV), seed=7, backend=backend, **kw)
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("choice", ["argmax", "sample"])
def test_gumbel_topk_select_equals_the_cpu_kernel(backend, choice):
    from vqfast.ops.sampling import HAS
    need(backend, HAS)
    x = _logits(3, 64, 257)
    masked = torch.rand(3, 64, generator=torch.Generator().manual_seed(3)) < 0.6
    n = masked.sum(1) // 2
    cpu = ops.gumbel_topk_select(x, masked, n, 4.5, choice, seed=11, backend="cpu")
    gpu = ops.gumbel_topk_select(x.to(DEV), masked.to(DEV), n.to(DEV), 4.5, choice, seed=11, backend=backend)
    assert torch.equal(gpu[0].cpu(), cpu[0])
    assert torch.equal(gpu[1].cpu(), cpu[1])  # one exact log-softmax rule: the same bits, the same reveals
    assert torch.equal(gpu[2].cpu(), cpu[2])


@pytest.mark.parametrize("backend", GPU)
def test_select_and_sample_topk_equals_the_cpu_kernel(backend):
    from vqfast.ops.sampling import HAS
    need(backend, HAS)
    x = _logits(2, 128, 513)
    known = torch.rand(2, 128, generator=torch.Generator().manual_seed(4)) < 0.5
    cpu = ops.select_and_sample_topk(x, known, 50, 3, seed=5, backend="cpu")
    gpu = ops.select_and_sample_topk(x.to(DEV), known.to(DEV), 50, 3, seed=5, backend=backend)
    for a, b in zip(gpu, cpu):
        assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("transition", ["uniform", "absorbing"])
def test_diffusion_ops(backend, transition):
    from vqfast.ops.diffusion import HAS
    need(backend, HAS)
    sched = CosineSchedule(100)
    K = 257 if transition == "uniform" else 258
    x = data(2, 300, K)
    z_t = torch.randint(0, K, (2, 300), generator=torch.Generator().manual_seed(6))
    x0 = torch.randint(0, K - (transition == "absorbing"), (2, 300), generator=torch.Generator().manual_seed(7))
    t = torch.tensor([1, 57])
    kw = dict(transition=transition)
    ref = posterior_logprobs(x, z_t, t, sched, backend="reference", **kw)
    got = posterior_logprobs(x.to(DEV), z_t.to(DEV), t.to(DEV), sched, backend=backend, **kw)
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-4)
    cpu = posterior_sample(x, z_t, t, sched, seed=9, backend="cpu", **kw)
    gpu = posterior_sample(x.to(DEV), z_t.to(DEV), t.to(DEV), sched, seed=9, backend=backend, **kw)
    assert torch.equal(gpu.cpu(), cpu)
    xg = x.detach().clone().to(DEV).requires_grad_()
    kl = vlb_kl(x0.to(DEV), xg, z_t.to(DEV), t.to(DEV), sched, backend=backend, **kw)
    xr = x.detach().clone().requires_grad_()
    klr = vlb_kl(x0, xr, z_t, t, sched, backend="reference", **kw)
    torch.testing.assert_close(kl.cpu(), klr, rtol=1e-4, atol=1e-5)
    up = data(*klr.shape, seed=8)
    kl.backward(up.to(DEV))
    klr.backward(up)
    torch.testing.assert_close(xg.grad.cpu(), xr.grad, rtol=1e-4, atol=1e-5)
