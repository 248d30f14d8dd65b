"""posterior_logprobs, posterior_sample and vlb_kl: the fused posterior ops of discrete
diffusion (VQ-DDM Sec. 3.1, eqs. 20-24): validation, dispatch, autograd.

Transitions "uniform" (multinomial, VQ-DDM) and "absorbing" (mask) behind one API; the
schedule and the forward process are in `vqfast.diffusion`. The per-row coefficients are
computed in float64 from the schedule and rounded to float32 once per schedule for every t
(a table), so every backend's kernel sees identical numbers.
"""
from __future__ import annotations

import weakref
from types import SimpleNamespace

import torch

from vqfast import _backend
from vqfast.diffusion.schedule import TRANSITIONS, num_states, posterior_coefficients, sample_coefficients
from vqfast.ops import _dispatch, _validate
from vqfast.random import STREAM_POSTERIOR, key_as_int64, philox_key
from vqfast.reference import diffusion as ref

HAS = ("cpu", "triton")  # backends with diffusion kernels besides the reference
KIND = {"uniform": 0, "absorbing": 1}  # the kernels' transition ids
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------- per-step coefficient tables

_TABLES: dict = {}  # key -> (weakref to alpha_bar, weakref to alpha, table)
_MAX_TABLES = 16


def _per_step(fn, sched, t: torch.Tensor, K: int, kind: str) -> torch.Tensor:
    """fn(sched, t, K, kind) as rows t - 1 of a table of fn over every t = 1..T, built once per
    (schedule tensors and their versions, K, kind, device): a sampling or training step then pays
    one index instead of ~15 small float64 ops (~50 us, most of the op's time at small sizes).
    The cache holds weak references: a schedule dropped by its owner is freed (an id reused by a
    new tensor misses, since the dead reference no longer returns that tensor)."""
    ab, a = sched.alpha_bar, sched.alpha
    key = (fn, id(ab), id(a), ab._version, a._version, K, kind, t.device)
    hit = _TABLES.get(key)
    if hit is None or hit[0]() is not ab or hit[1]() is not a:
        _TABLES.pop(key, None)
        if len(_TABLES) >= _MAX_TABLES:
            _TABLES.pop(next(iter(_TABLES)))
        steps = torch.arange(1, ab.numel(), device=t.device)
        hit = _TABLES[key] = (weakref.ref(ab), weakref.ref(a), fn(sched, steps, K, kind).contiguous())
    return hit[2][t - 1]


def _sched(alpha_bar: torch.Tensor, alpha: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(alpha_bar=alpha_bar, alpha=alpha, T=alpha_bar.numel() - 1)


def _coef(alpha_bar, alpha, t, K, transition) -> torch.Tensor:
    return _per_step(posterior_coefficients, _sched(alpha_bar, alpha), t, K, transition)


def _sample_coef(alpha_bar, alpha, t, K, transition) -> torch.Tensor:
    return _per_step(sample_coefficients, _sched(alpha_bar, alpha), t, K, transition)


# ---------------------------------------------------------------- posterior_logprobs

@torch.library.custom_op("vqfast::diffusion_posterior_logprobs", mutates_args=())
def _logprobs_op(log_x0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor,
                 alpha: torch.Tensor, transition: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (log-probs [N, K'] fp32, logsumexp of log_x0 [N] fp32)."""
    B, N, K = t.shape[0], log_x0.shape[0], log_x0.shape[1]
    if backend == "reference":
        x = log_x0.reshape(B, N // B, K)
        out = ref.posterior_logprobs(x, z_t.reshape(B, -1), t, _sched(alpha_bar, alpha), transition)
        return out.float().reshape(N, -1), torch.logsumexp(log_x0.float(), dim=-1)
    args = (log_x0, z_t, _coef(alpha_bar, alpha, t, K, transition), N // B, KIND[transition])
    if backend == "cpu":
        return torch.ops.vqfast_cpu.diffusion_posterior_logprobs(*args)
    if backend == "triton":
        from vqfast.triton_kernels.diffusion import posterior_logprobs_triton
        return posterior_logprobs_triton(*args)
    raise AssertionError(f"unreachable backend {backend}")


@_logprobs_op.register_fake
def _(log_x0, z_t, t, alpha_bar, alpha, transition, backend):
    n, k = log_x0.shape
    return (log_x0.new_empty(n, num_states(k, transition), dtype=torch.float32),
            log_x0.new_empty(n, dtype=torch.float32))


@torch.library.custom_op("vqfast::diffusion_posterior_logprobs_backward", mutates_args=())
def _logprobs_backward_op(grad: torch.Tensor, log_x0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor,
                          alpha_bar: torch.Tensor, alpha: torch.Tensor, lse: torch.Tensor, transition: str,
                          backend: str) -> torch.Tensor:
    """grad [N, K'] fp32 -> d loss / d log_x0 [N, K] in its dtype, one task per position."""
    N, K = log_x0.shape
    args = (grad, log_x0, z_t, _coef(alpha_bar, alpha, t, K, transition), N // t.shape[0], KIND[transition], lse)
    if backend == "cpu":
        return torch.ops.vqfast_cpu.diffusion_posterior_logprobs_backward(*args)
    if backend == "triton":
        from vqfast.triton_kernels.diffusion import posterior_logprobs_backward_triton
        return posterior_logprobs_backward_triton(*args)
    raise AssertionError(f"unreachable backend {backend}")


@_logprobs_backward_op.register_fake
def _(grad, log_x0, z_t, t, alpha_bar, alpha, lse, transition, backend):
    return torch.empty_like(log_x0)


def _logprobs_setup(ctx, inputs, output):
    log_x0, z_t, t, alpha_bar, alpha, transition, backend = inputs
    ctx.transition, ctx.backend = transition, backend
    ctx.save_for_backward(log_x0, z_t, t, alpha_bar, alpha, output[1])


def _logprobs_backward(ctx, grad_out, _grad_lse):
    log_x0, z_t, t, alpha_bar, alpha, lse = ctx.saved_tensors
    B, N, K = t.shape[0], log_x0.shape[0], log_x0.shape[1]
    none = (None,) * 6
    if ctx.backend in HAS:  # fused: one task per position, no [N, K] temporaries
        g = _logprobs_backward_op(grad_out.float().contiguous(), log_x0, z_t, t, alpha_bar, alpha, lse,
                                  ctx.transition, ctx.backend)
        return (g, *none)
    # reference: autograd through the float64 oracle (autograd is off inside custom ops)
    with torch.enable_grad():
        x = log_x0.detach().double().requires_grad_(True)
        out = ref.posterior_logprobs(x.reshape(B, N // B, K), z_t.reshape(B, -1), t, _sched(alpha_bar, alpha),
                                     ctx.transition)
        out = torch.where(torch.isfinite(out), out, torch.zeros_like(out))  # -inf entries carry no gradient
        (g,) = torch.autograd.grad(out, x, grad_out.double().reshape(out.shape))
    return (g.to(log_x0.dtype), *none)


_logprobs_op.register_autograd(_logprobs_backward, setup_context=_logprobs_setup)


# ---------------------------------------------------------------- posterior_sample

def _sample_cpu(log_x0, z_t, t, alpha_bar, alpha, transition, key):
    N, K = log_x0.shape
    coef = _sample_coef(alpha_bar, alpha, t, K, transition)
    return torch.ops.vqfast_cpu.diffusion_posterior_sample(log_x0, z_t, coef, N // t.shape[0], KIND[transition], key,
                                                           STREAM_POSTERIOR)


@torch.library.custom_op("vqfast::diffusion_posterior_sample", mutates_args=())
def _sample_op(log_x0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor,
               alpha: torch.Tensor, transition: str, key: int, backend: str) -> torch.Tensor:
    """-> z_{t-1} [N] int64, -1 at rows with NaN / +inf or no finite value."""
    B, N, K = t.shape[0], log_x0.shape[0], log_x0.shape[1]
    if backend == "reference":
        x = log_x0.reshape(B, N // B, K)
        out = ref.posterior_sample(x, z_t.reshape(B, -1), t, _sched(alpha_bar, alpha), key & _MASK64, transition)
        bad = ~torch.isfinite(torch.logsumexp(log_x0.float(), dim=-1))
        if transition == "absorbing":
            bad &= z_t == K
        return torch.where(bad, -1, out.reshape(N))
    if backend == "cpu":
        return _sample_cpu(log_x0, z_t, t, alpha_bar, alpha, transition, key)
    if backend == "triton":
        from vqfast.triton_kernels.diffusion import posterior_sample_triton
        coef = _sample_coef(alpha_bar, alpha, t, K, transition)
        return posterior_sample_triton(log_x0, z_t, coef, N // B, KIND[transition], key & _MASK64, STREAM_POSTERIOR)
    raise AssertionError(f"unreachable backend {backend}")


@_sample_op.register_fake
def _(log_x0, z_t, t, alpha_bar, alpha, transition, key, backend):
    return z_t.new_empty(z_t.shape)


# ---------------------------------------------------------------- vlb_kl

def _reference_kl(x0, log_x0_pred, z_t, t, alpha_bar, alpha, transition):
    B, N, K = t.shape[0], log_x0_pred.shape[0], log_x0_pred.shape[1]
    return ref.vlb_kl(x0.reshape(B, -1), log_x0_pred.reshape(B, N // B, K), z_t.reshape(B, -1), t,
                      _sched(alpha_bar, alpha), transition).reshape(N)


def _vlb_cpu(x0, log_x0_pred, z_t, t, alpha_bar, alpha, transition):
    N, K = log_x0_pred.shape
    coef = _coef(alpha_bar, alpha, t, K, transition)
    return torch.ops.vqfast_cpu.diffusion_vlb_kl(log_x0_pred, z_t, x0, coef, N // t.shape[0], KIND[transition])


@torch.library.custom_op("vqfast::diffusion_vlb_kl", mutates_args=())
def _vlb_op(x0: torch.Tensor, log_x0_pred: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor,
            alpha_bar: torch.Tensor, alpha: torch.Tensor, transition: str, backend: str
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (kl [N] fp32, stats [N, 3] fp32: what the fused backward needs per position)."""
    N, K = log_x0_pred.shape
    if backend == "reference":
        kl = _reference_kl(x0, log_x0_pred, z_t, t, alpha_bar, alpha, transition).float()
        lse = torch.logsumexp(log_x0_pred.float(), dim=-1)
        return kl, torch.stack([lse, torch.zeros_like(lse), torch.zeros_like(lse)], dim=1)
    if backend == "cpu":
        return _vlb_cpu(x0, log_x0_pred, z_t, t, alpha_bar, alpha, transition)
    if backend == "triton":
        from vqfast.triton_kernels.diffusion import vlb_kl_triton
        coef = _coef(alpha_bar, alpha, t, K, transition)
        return vlb_kl_triton(log_x0_pred, z_t, x0, coef, N // t.shape[0], KIND[transition])
    raise AssertionError(f"unreachable backend {backend}")


@_vlb_op.register_fake
def _(x0, log_x0_pred, z_t, t, alpha_bar, alpha, transition, backend):
    n = log_x0_pred.shape[0]
    return log_x0_pred.new_empty(n, dtype=torch.float32), log_x0_pred.new_empty(n, 3, dtype=torch.float32)


@torch.library.custom_op("vqfast::diffusion_vlb_kl_backward", mutates_args=())
def _vlb_backward_op(grad: torch.Tensor, x0: torch.Tensor, log_x0_pred: torch.Tensor, z_t: torch.Tensor,
                     t: torch.Tensor, alpha_bar: torch.Tensor, alpha: torch.Tensor, stats: torch.Tensor,
                     transition: str, backend: str) -> torch.Tensor:
    """grad [N] fp32 -> d loss / d log_x0_pred [N, K] in its dtype, one pass per position."""
    N, K = log_x0_pred.shape
    args = (grad, log_x0_pred, z_t, x0, _coef(alpha_bar, alpha, t, K, transition), N // t.shape[0],
            KIND[transition], stats)
    if backend == "cpu":
        return torch.ops.vqfast_cpu.diffusion_vlb_kl_backward(*args)
    if backend == "triton":
        from vqfast.triton_kernels.diffusion import vlb_kl_backward_triton
        return vlb_kl_backward_triton(*args)
    raise AssertionError(f"unreachable backend {backend}")


@_vlb_backward_op.register_fake
def _(grad, x0, log_x0_pred, z_t, t, alpha_bar, alpha, stats, transition, backend):
    return torch.empty_like(log_x0_pred)


def _vlb_setup(ctx, inputs, output):
    x0, log_x0_pred, z_t, t, alpha_bar, alpha, transition, backend = inputs
    ctx.transition, ctx.backend = transition, backend
    ctx.save_for_backward(x0, log_x0_pred, z_t, t, alpha_bar, alpha, output[1])


def _vlb_backward(ctx, grad_kl, _grad_stats):
    x0, log_x0_pred, z_t, t, alpha_bar, alpha, stats = ctx.saved_tensors
    if ctx.backend == "reference":  # autograd through the oracle (autograd is off inside custom ops)
        with torch.enable_grad():
            x = log_x0_pred.detach().double().requires_grad_(True)
            kl = _reference_kl(x0, x, z_t, t, alpha_bar, alpha, ctx.transition)
            (g,) = torch.autograd.grad(kl, x, grad_kl.double())
        g = g.to(log_x0_pred.dtype)
    else:
        g = _vlb_backward_op(grad_kl.float().contiguous(), x0, log_x0_pred, z_t, t, alpha_bar, alpha, stats,
                             ctx.transition, ctx.backend)
    return None, g, None, None, None, None, None, None


_vlb_op.register_autograd(_vlb_backward, setup_context=_vlb_setup)


# ---------------------------------------------------------------- public functions

def _check(log_x0, z_t, t, schedule, transition, op, backend):
    """Validates; returns (flat log_x0 [N, K], flat z_t [N], t [B], backend name)."""
    _validate.tensor("log_x0", log_x0, min_dim=2)
    _validate.nonempty("log_x0", log_x0, range(log_x0.dim()), "[B, ..., K] with every size >= 1")
    _validate.schedule(schedule)
    transition = _validate.one_of("transition", transition, TRANSITIONS)
    K = log_x0.shape[-1]
    _validate.tokens("z_t", z_t, log_x0.shape[:-1], num_states(K, transition),
                     "K + 1" if transition == "absorbing" else "K")
    device = _validate.same_device(log_x0=log_x0, z_t=z_t)
    t = _validate.timesteps(t, log_x0.shape[0], schedule.T, device)
    name = _backend.resolve(op, backend, device, has=HAS)
    return log_x0.reshape(-1, K).contiguous(), z_t.reshape(-1).contiguous(), t, name


def posterior_logprobs(log_x0: torch.Tensor, z_t: torch.Tensor, t, schedule, *, transition: str = "uniform",
                       backend: str = "auto") -> torch.Tensor:
    """log q(z_{t-1} | z_t, x0) in one pass per position (VQ-DDM eqs. 20-21), float32.

    log_x0 [B, ..., K] logits or log-probs of x0 (normalized inside; fp32/fp16/bf16),
    z_t [B, ...] int64 in [0, K) ("uniform") or [0, K] ("absorbing", K = mask),
    t [B] int64 (or an int) in 1..T -> [B, ..., K] (K + 1 for "absorbing").
    Differentiable in log_x0 (fused backward on "cpu" and "triton"; autograd through the
    float64 reference on "reference"). Rows of log_x0 with NaN or +inf raise ValueError.

        lp = vqfast.ops.posterior_logprobs(logits, z_t, t, CosineSchedule(4000))
    """
    flat, zt, t, name = _check(log_x0, z_t, t, schedule, transition, "posterior_logprobs", backend)
    out, lse = _logprobs_op(flat, zt, t, schedule.alpha_bar, schedule.alpha, transition, name)
    _validate.finite_rows("log_x0", (~torch.isfinite(lse.detach())).reshape(log_x0.shape[:-1]), "positions")
    return out.reshape(*log_x0.shape[:-1], out.shape[-1])


def posterior_sample(log_x0: torch.Tensor, z_t: torch.Tensor, t, schedule,
                     generator: torch.Generator | int | None = None, *, seed: int | None = None, transition: str = "uniform", backend: str = "auto") -> torch.Tensor:
    """z_{t-1} ~ q(z_{t-1} | z_t, softmax(log_x0)) without writing [B, L, K] or per-state noise.

    Shapes as in `posterior_logprobs`; returns z_{t-1} [B, ...] int64. The posterior is
    sampled as a mixture (the z_t spike, the softmax of log_x0, the uniform part) by
    rejection from vqfast's integer categorical proposal (vqfast/reference/diffusion.py
    posterior_sample), with a few words per position of vqfast's Philox stream
    STREAM_POSTERIOR keyed by `generator` or `seed`: every backend draws the same tokens,
    exactly. "absorbing": unmasked tokens are kept, masked ones become a token or stay masked.

        z_prev = vqfast.ops.posterior_sample(logits, z_t, t, sched, torch.Generator().manual_seed(0))
    """
    flat, zt, t, name = _check(log_x0, z_t, t, schedule, transition, "posterior_sample", backend)
    key = key_as_int64(philox_key(generator, seed))
    args = (flat.detach(), zt, t, schedule.alpha_bar, schedule.alpha, transition, key)
    out = _dispatch.run(_sample_op, _sample_cpu, args, name)
    _validate.finite_rows("log_x0", (out < 0).reshape(z_t.shape), "positions")
    return out.reshape(z_t.shape)


def vlb_kl(x0: torch.Tensor, log_x0_pred: torch.Tensor, z_t: torch.Tensor, t, schedule, *,
           transition: str = "uniform", backend: str = "auto") -> torch.Tensor:
    """KL(q(z_{t-1} | z_t, x0) || q(z_{t-1} | z_t, x0_pred)) per position (VQ-DDM eq. 24), fused.

    x0 [B, ...] int64 true tokens in [0, K), log_x0_pred [B, ..., K] the model's logits or
    log-probs of x0 (fp32/fp16/bf16), z_t [B, ...], t [B] in 1..T -> kl [B, ...] float32 in
    nats. At t = 1 the true posterior is one-hot at x0, so kl = -log p(x0 | z_1) of the
    model's posterior (multinomial-diffusion decoder term). Differentiable in log_x0_pred
    with a fused one-pass backward; no [B, L, K] temporaries on the kernel backends.
    "absorbing": 0 at unmasked positions, -c_t log p(x0) at masked ones.

        loss = vqfast.ops.vlb_kl(x0, logits, z_t, t, sched).sum(-1).mean()
    """
    flat, zt, t, name = _check(log_x0_pred, z_t, t, schedule, transition, "vlb_kl", backend)
    _validate.tokens("x0", x0, log_x0_pred.shape[:-1], log_x0_pred.shape[-1], "K")
    _validate.same_device(log_x0_pred=log_x0_pred, x0=x0)
    args = (x0.reshape(-1).contiguous(), flat, zt, t, schedule.alpha_bar, schedule.alpha, transition)
    grad = torch.is_grad_enabled() and log_x0_pred.requires_grad
    kl, _ = _dispatch.run(_vlb_op, _vlb_cpu, args, name, needs_autograd=grad)
    _validate.finite_rows("log_x0_pred", torch.isnan(kl.detach()).reshape(z_t.shape), "positions")
    return kl.reshape(z_t.shape)
