"""posterior_logprobs and posterior_sample (DESIGN.md op 10, VQ-DDM eqs. 20-22):
validation, dispatch, autograd."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from vqfast import random as _random
from vqfast.diffusion import _args
from vqfast.reference import diffusion as ref

_MASK64 = (1 << 64) - 1


def _sched(alpha_bar: torch.Tensor, alpha: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(alpha_bar=alpha_bar, alpha=alpha, T=alpha_bar.numel() - 1)


@torch.library.custom_op("vqfast::diffusion_posterior_logprobs", mutates_args=())
def _logprobs_op(log_x0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor,
                 alpha: torch.Tensor, transition: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    B, N, K = t.shape[0], log_x0.shape[0], log_x0.shape[1]
    if backend == "reference":
        x = log_x0.reshape(B, N // B, K)
        out = ref.posterior_logprobs(x, z_t.reshape(B, -1), t, _sched(alpha_bar, alpha), transition)
        return out.float().reshape(N, -1), torch.logsumexp(log_x0.float(), dim=-1)
    coef = _args.coefficients(_sched(alpha_bar, alpha), t, K, transition)
    kind = _args.KIND[transition]
    if backend == "cpu":
        return torch.ops.vqfast_cpu.diffusion_posterior_logprobs(log_x0, z_t, coef, N // B, kind)
    if backend == "triton":
        from vqfast.triton_kernels.diffusion import posterior_logprobs_triton
        return posterior_logprobs_triton(log_x0, z_t, coef, N // B, kind)
    raise AssertionError(f"unreachable backend {backend}")


@_logprobs_op.register_fake
def _(log_x0, z_t, t, alpha_bar, alpha, transition, backend):
    n, k = log_x0.shape
    k = k + 1 if transition == "absorbing" else k
    return log_x0.new_empty(n, k, dtype=torch.float32), log_x0.new_empty(n, dtype=torch.float32)


def _logprobs_setup(ctx, inputs, output):
    log_x0, z_t, t, alpha_bar, alpha, transition, backend = inputs
    ctx.transition, ctx.backend = transition, backend
    ctx.save_for_backward(log_x0, z_t, t, alpha_bar, alpha, output[1])


def _logprobs_backward(ctx, grad_out, _grad_lse):
    log_x0, z_t, t, alpha_bar, alpha, lse = ctx.saved_tensors
    B, N, K = t.shape[0], log_x0.shape[0], log_x0.shape[1]
    if ctx.backend in _args.HAS:  # fused: one task per position, no [N, K] temporaries
        coef = _args.coefficients(_sched(alpha_bar, alpha), t, K, ctx.transition)
        args = (grad_out.float().contiguous(), log_x0, z_t, coef, N // B, _args.KIND[ctx.transition], lse)
        if ctx.backend == "cpu":
            g = torch.ops.vqfast_cpu.diffusion_posterior_logprobs_backward(*args)
        else:
            from vqfast.triton_kernels.diffusion import posterior_logprobs_backward_triton
            g = posterior_logprobs_backward_triton(*args)
        return g, None, None, None, None, None, None
    # reference: autograd through the float64 reference
    with torch.enable_grad():
        x = log_x0.detach().double().requires_grad_(True)
        out = ref.posterior_logprobs(x.reshape(B, N // B, K), z_t.reshape(B, -1), t, _sched(alpha_bar, alpha),
                                     ctx.transition)
        out = torch.where(torch.isfinite(out), out, torch.zeros_like(out))  # -inf entries carry no gradient
        (g,) = torch.autograd.grad(out, x, grad_out.double().reshape(out.shape))
    return g.to(log_x0.dtype), None, None, None, None, None, None


_logprobs_op.register_autograd(_logprobs_backward, setup_context=_logprobs_setup)


def _sample_cpu(log_x0, z_t, t, alpha_bar, alpha, transition, key):
    B, N, K = t.shape[0], log_x0.shape[0], log_x0.shape[1]
    coef = _args.sample_coefficients(_sched(alpha_bar, alpha), t, K, transition)
    return torch.ops.vqfast_cpu.diffusion_posterior_sample(log_x0, z_t, coef, N // B, _args.KIND[transition], key,
                                                           ref.STREAM_POSTERIOR)


@torch.library.custom_op("vqfast::diffusion_posterior_sample", mutates_args=())
def _sample_op(log_x0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor,
               alpha: torch.Tensor, transition: str, key: int, backend: str) -> torch.Tensor:
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
    coef = _args.sample_coefficients(_sched(alpha_bar, alpha), t, K, transition)
    kind = _args.KIND[transition]
    if backend == "triton":
        from vqfast.triton_kernels.diffusion import posterior_sample_triton
        return posterior_sample_triton(log_x0, z_t, coef, N // B, kind, key & _MASK64, ref.STREAM_POSTERIOR)
    raise AssertionError(f"unreachable backend {backend}")


@_sample_op.register_fake
def _(log_x0, z_t, t, alpha_bar, alpha, transition, key, backend):
    return z_t.new_empty(z_t.shape)


def _check(log_x0, z_t, t, schedule, transition, op, backend):
    """Validates; returns (flat log_x0 [N, K], flat z_t [N], t [B], backend name)."""
    _args.logits("log_x0", log_x0)
    _args.schedule(schedule)
    transition = _args.transition(transition)
    K = log_x0.shape[-1]
    states = ref.num_states(K, transition)
    _args.tokens("z_t", z_t, log_x0.shape[:-1], states, "K + 1" if transition == "absorbing" else "K")
    if z_t.device != log_x0.device:
        raise ValueError(f"all tensors must be on one device, got log_x0 on {log_x0.device}, z_t on {z_t.device}")
    t = _args.timesteps(t, log_x0.shape[0], schedule.T, log_x0.device)
    name = _args.resolve(op, backend, log_x0.device)
    return log_x0.reshape(-1, K).contiguous(), z_t.reshape(-1).contiguous(), t, name


def posterior_logprobs(log_x0: torch.Tensor, z_t: torch.Tensor, t, schedule, *, transition: str = "uniform",
                       backend: str = "auto") -> torch.Tensor:
    """log q(z_{t-1} | z_t, x0) in one pass per position (VQ-DDM eqs. 20-21), float32.

    log_x0 [B, ..., K] logits or log-probs of x0 (normalized inside; fp32/fp16/bf16),
    z_t [B, ...] int64 in [0, K) ("uniform") or [0, K] ("absorbing", K = mask),
    t [B] int64 (or an int) in 1..T -> [B, ..., K] (K + 1 for "absorbing").
    Differentiable in log_x0 (fused backward on "cpu" and "triton"; autograd through the
    float64 reference on "reference"). Rows of log_x0 with NaN
    or +inf raise ValueError.

        lp = posterior_logprobs(logits, z_t, t, CosineSchedule(4000))
    """
    flat, zt, t, name = _check(log_x0, z_t, t, schedule, transition, "posterior_logprobs", backend)
    out, lse = _logprobs_op(flat, zt, t, schedule.alpha_bar, schedule.alpha, transition, name)
    _args.nonfinite_rows("log_x0", (~torch.isfinite(lse.detach())).reshape(log_x0.shape[:-1]))
    return out.reshape(*log_x0.shape[:-1], out.shape[-1])


def posterior_sample(log_x0: torch.Tensor, z_t: torch.Tensor, t, schedule, generator: torch.Generator | None = None,
                     *, seed: int | None = None, transition: str = "uniform", backend: str = "auto") -> torch.Tensor:
    """z_{t-1} ~ q(z_{t-1} | z_t, softmax(log_x0)) without writing [B, L, K] or per-state noise.

    Shapes as in `posterior_logprobs`; returns z_{t-1} [B, ...] int64. The posterior is
    sampled as a mixture (the z_t spike, the softmax of log_x0, the uniform part) by
    rejection from vqfast's integer categorical proposal (vqfast/reference/diffusion.py
    posterior_sample), with a few words per position of vqfast's Philox stream 16 keyed by
    `generator` or `seed`: every backend draws the same tokens, exactly.
    "absorbing": unmasked tokens are kept, masked ones become a token or stay masked.

        z_prev = posterior_sample(logits, z_t, t, sched, torch.Generator().manual_seed(0))
    """
    flat, zt, t, name = _check(log_x0, z_t, t, schedule, transition, "posterior_sample", backend)
    key = _random.key_as_int64(_random.philox_key(generator, seed))
    if name == "cpu" and not torch.compiler.is_compiling():
        # Eager: the registered kernel directly, as ema_statistics does; the custom-op layer
        # (~15-30 us) was 5-10% of a call at B=8 L=256 K=1024. torch.compile traces the op.
        out = _sample_cpu(flat.detach(), zt, t, schedule.alpha_bar, schedule.alpha, transition, key)
    else:
        out = _sample_op(flat.detach(), zt, t, schedule.alpha_bar, schedule.alpha, transition, key, name)
    _args.nonfinite_rows("log_x0", (out < 0).reshape(z_t.shape))
    return out.reshape(z_t.shape)
