"""One table of every public op (forward and, where differentiable, backward) as calls on
prepared inputs, shared by the leak, thread and size tests.

`CALLS[name](backend, seed, size)` -> `Call(inputs, run)`: fresh input tensors (a dict) and a
function `run(**inputs)` that runs the op once on them and returns its outputs (gradients too,
for the backward entries) as a list of tensors. Random ops take an int seed, so every call of
one `run` on one `inputs` returns the same values: callers compare repeated, concurrent or
forked calls with `torch.equal`. `size` is "tiny" (Triton interpreter, long loops) or "small".
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from functools import partial
from typing import Callable, NamedTuple

import torch

import vqfast
import vqfast.diffusion as D
from vqfast import ops

SIZES = {"tiny": dict(N=16, K=8, d=8, B=2, L=2, V=16), "small": dict(N=256, K=64, d=32, B=2, L=32, V=300)}
T_STEPS = 20


class Call(NamedTuple):
    inputs: dict
    run: Callable[..., list]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _grads(outputs, *leaves):
    """Gradients of the sum of the differentiable outputs to the leaves (no .grad accumulation)."""
    total = sum(o.float().sum() for o in outputs if o is not None and o.requires_grad)
    return list(torch.autograd.grad(total, leaves))


def _search(seed, size, grad=False):
    s, g = SIZES[size], _gen(seed)
    return dict(x=torch.randn(s["N"], s["d"], generator=g).requires_grad_(grad),
                cb=torch.randn(s["K"], s["d"], generator=g).requires_grad_(grad))


def nearest_code(backend, seed, size):
    return Call(_search(seed, size), lambda x, cb: list(ops.nearest_code(x, cb, backend=backend)))


def quantize(backend, seed, size):
    return Call(_search(seed, size), lambda x, cb: list(ops.quantize(x, cb, backend=backend)))


def _quantize_backward(backend, x, cb):
    out = ops.quantize(x, cb, backend=backend)
    return [out.indices] + _grads([out.z_q, out.commit_loss, out.codebook_loss], x, cb)


def quantize_backward(backend, seed, size):
    return Call(_search(seed, size, grad=True), partial(_quantize_backward, backend))


def nearest_code_with_statistics(backend, seed, size):
    return Call(_search(seed, size), lambda x, cb: list(ops.nearest_code_with_statistics(x, cb, backend=backend)))


def _quantize_with_statistics_backward(backend, x, cb):
    q, counts, sums = ops.quantize_with_statistics(x, cb, backend=backend)
    return [q.indices, counts, sums] + _grads([q.z_q, q.commit_loss, q.codebook_loss], x, cb)


def quantize_with_statistics_backward(backend, seed, size):
    return Call(_search(seed, size, grad=True), partial(_quantize_with_statistics_backward, backend))


def _dual_backward(backend, x, visible, e, e2):
    out = ops.dual_codebook_quantize(x, visible, e, e2, backend=backend)
    return [out.indices] + _grads([out.z_q, out.commit_loss, out.codebook_loss], x, e, e2)


def dual_codebook_quantize_backward(backend, seed, size):
    s, g = SIZES[size], _gen(seed)
    inputs = dict(x=torch.randn(s["N"], s["d"], generator=g).requires_grad_(),
                  visible=torch.rand(s["N"], generator=g) < 0.5,
                  e=torch.randn(s["K"], s["d"], generator=g).requires_grad_(),
                  e2=torch.randn(s["K"] // 2 + 1, s["d"], generator=g).requires_grad_())
    return Call(inputs, partial(_dual_backward, backend))


def _residual_backward(backend, x, cb):
    out = ops.residual_quantize(x, cb, backend=backend)
    return [out.indices] + _grads([out.z_q, out.commit_loss, out.codebook_loss], x, cb)


def residual_quantize_backward(backend, seed, size):
    s, g = SIZES[size], _gen(seed)
    inputs = dict(x=torch.randn(s["N"], s["d"], generator=g).requires_grad_(),
                  cb=torch.randn(3, s["K"], s["d"], generator=g).requires_grad_())
    return Call(inputs, partial(_residual_backward, backend))


def ema_statistics(backend, seed, size):
    s, g = SIZES[size], _gen(seed)
    inputs = dict(x=torch.randn(s["N"], s["d"], generator=g), idx=torch.randint(0, s["K"], (s["N"],), generator=g))
    return Call(inputs, lambda x, idx: list(ops.ema_statistics(x, idx, s["K"], backend=backend)))


def _ema_update(backend, size0, sum0, counts, sums):
    cluster_size, embed_sum = size0.clone(), sum0.clone()  # fresh state: every call returns the same values
    return [ops.ema_update_(cluster_size, embed_sum, counts, sums, 0.9, 1e-5, backend=backend),
            cluster_size, embed_sum]


def ema_update_(backend, seed, size):
    s, g = SIZES[size], _gen(seed)
    inputs = dict(size0=torch.rand(s["K"], generator=g), sum0=torch.randn(s["K"], s["d"], generator=g),
                  counts=torch.randint(0, 5, (s["K"],), generator=g).float(),
                  sums=torch.randn(s["K"], s["d"], generator=g))
    return Call(inputs, partial(_ema_update, backend))


def _logits(seed, size, **extra):
    s, g = SIZES[size], _gen(seed)
    logits = 3 * torch.randn(s["B"], s["L"], s["V"], generator=g)
    return dict(logits=logits, **{k: f(g, logits) for k, f in extra.items()})


def gumbel_topk_select(backend, seed, size):
    inputs = _logits(seed, size, masked=lambda g, x: torch.rand(x.shape[:2], generator=g) < 0.6)
    return Call(inputs, lambda logits, masked: list(ops.gumbel_topk_select(
        logits, masked, masked.sum(1) // 2, 2.0, "sample", [0], seed=seed, backend=backend)))


def select_and_sample_topk(backend, seed, size):
    inputs = _logits(seed, size, known=lambda g, x: torch.rand(x.shape[:2], generator=g) < 0.3)
    return Call(inputs, lambda logits, known: list(ops.select_and_sample_topk(
        logits, known, 5, 2, 0.8, seed=seed, backend=backend)))


def sample_logits(backend, seed, size):
    inputs = _logits(seed, size, uncond=lambda g, x: torch.randn(x.shape, generator=g))
    # top-k and top-p only at "small": their bisections cost the Triton interpreter ~3 s a call
    top_k, top_p = (10, 0.8) if size == "small" else (None, None)
    return Call(inputs, lambda logits, uncond: [ops.sample_logits(
        logits, 0.9, top_k, top_p, 2.0, uncond, seed=seed, backend=backend)])


def _diffusion(seed, size, grad=False):
    s, g = SIZES[size], _gen(seed)
    return dict(x=(3 * torch.randn(s["B"], s["L"], s["V"], generator=g)).requires_grad_(grad),
                z=torch.randint(0, s["V"], (s["B"], s["L"]), generator=g),
                x0=torch.randint(0, s["V"], (s["B"], s["L"]), generator=g),
                t=torch.randint(1, T_STEPS + 1, (s["B"],), generator=g),
                sched=D.CosineSchedule(T_STEPS))


def _logprobs_backward(backend, x, z, x0, t, sched):
    out = ops.posterior_logprobs(x, z, t, sched, backend=backend)
    up = torch.where(torch.isfinite(out), out, torch.zeros_like(out))
    return [out.detach()] + list(torch.autograd.grad((up * 0.5).sum(), x))


def posterior_logprobs_backward(backend, seed, size):
    return Call(_diffusion(seed, size, grad=True), partial(_logprobs_backward, backend))


def posterior_sample(backend, seed, size):
    return Call(_diffusion(seed, size), lambda x, z, x0, t, sched: [
        ops.posterior_sample(x, z, t, sched, seed=seed, backend=backend)])


def _vlb_backward(backend, x, z, x0, t, sched):
    kl = ops.vlb_kl(x0, x, z, t, sched, backend=backend)
    return [kl.detach()] + list(torch.autograd.grad(kl.sum(), x))


def vlb_kl_backward(backend, seed, size):
    return Call(_diffusion(seed, size, grad=True), partial(_vlb_backward, backend))


def q_sample(backend, seed, size):
    """One implementation for every backend (O(B L) Philox draws): backend is ignored."""
    V = SIZES[size]["V"]
    return Call(_diffusion(seed, size), lambda x, z, x0, t, sched: [
        D.q_sample(x0, t, sched, seed=seed, num_classes=V)])


_ENV_LOCK = threading.Lock()
_env_users = [0, None]  # callers inside backend_env, the value VQFAST_BACKEND had before the first


@contextmanager
def backend_env(backend: str):
    """kmeans calls the ops with backend="auto": VQFAST_BACKEND names the one they resolve to.
    Concurrent callers (the thread tests) share one setting, restored when the last one leaves."""
    with _ENV_LOCK:
        if _env_users[0] == 0:
            _env_users[1] = os.environ.get("VQFAST_BACKEND")
            os.environ["VQFAST_BACKEND"] = backend
        elif os.environ["VQFAST_BACKEND"] != backend:
            raise RuntimeError(f"backend_env({backend!r}) while {os.environ['VQFAST_BACKEND']!r} is in use")
        _env_users[0] += 1
    try:
        yield
    finally:
        with _ENV_LOCK:
            _env_users[0] -= 1
            if _env_users[0] == 0:
                if _env_users[1] is None:
                    del os.environ["VQFAST_BACKEND"]
                else:
                    os.environ["VQFAST_BACKEND"] = _env_users[1]


def kmeans(backend, seed, size):
    s = SIZES[size]

    def run(x):
        with backend_env(backend):
            return list(vqfast.kmeans(x, s["K"] // 2, iters=2, init="kmeans++", generator=_gen(seed)))
    return Call(dict(x=torch.randn(s["N"], s["d"], generator=_gen(seed))), run)


CALLS = {f.__name__: f for f in (
    nearest_code, quantize, quantize_backward, nearest_code_with_statistics, quantize_with_statistics_backward,
    dual_codebook_quantize_backward, residual_quantize_backward, ema_statistics, ema_update_, gumbel_topk_select,
    select_and_sample_topk, sample_logits, posterior_logprobs_backward, posterior_sample, vlb_kl_backward, q_sample,
    kmeans)}
SINGLE = {"q_sample"}  # one implementation whatever the backend: run under the name "reference" only


def cases(backends):
    """(name, backend) pairs of the table on the given backends."""
    return [(name, b) for name in CALLS for b in backends if name not in SINGLE or b == "reference"]
