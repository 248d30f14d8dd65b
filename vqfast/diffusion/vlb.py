"""vlb_kl: the VLB term of VQ-DDM (eq. 24) per position with a fused backward to the logits."""
from __future__ import annotations

import torch

from vqfast.diffusion import _args
from vqfast.diffusion.posterior import _check, _sched
from vqfast.reference import diffusion as ref


def _reference_kl(x0, log_x0_pred, z_t, t, alpha_bar, alpha, transition):
    B, N, K = t.shape[0], log_x0_pred.shape[0], log_x0_pred.shape[1]
    return ref.vlb_kl(x0.reshape(B, -1), log_x0_pred.reshape(B, N // B, K), z_t.reshape(B, -1), t,
                      _sched(alpha_bar, alpha), transition).reshape(N)


def _vlb_cpu(x0, log_x0_pred, z_t, t, alpha_bar, alpha, transition):
    N, K = log_x0_pred.shape
    coef = _args.coefficients(_sched(alpha_bar, alpha), t, K, transition)
    return torch.ops.vqfast_cpu.diffusion_vlb_kl(log_x0_pred, z_t, x0, coef, N // t.shape[0], _args.KIND[transition])


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
    coef = _args.coefficients(_sched(alpha_bar, alpha), t, K, transition)
    kind, L = _args.KIND[transition], N // t.shape[0]
    if backend == "triton":
        from vqfast.triton_kernels.diffusion import vlb_kl_triton
        return vlb_kl_triton(log_x0_pred, z_t, x0, coef, L, kind)
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
    coef = _args.coefficients(_sched(alpha_bar, alpha), t, K, transition)
    kind, L = _args.KIND[transition], N // t.shape[0]
    if backend == "cpu":
        return torch.ops.vqfast_cpu.diffusion_vlb_kl_backward(grad, log_x0_pred, z_t, x0, coef, L, kind, stats)
    if backend == "triton":
        from vqfast.triton_kernels.diffusion import vlb_kl_backward_triton
        return vlb_kl_backward_triton(grad, log_x0_pred, z_t, x0, coef, L, kind, stats)
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
        return None, g.to(log_x0_pred.dtype), None, None, None, None, None, None
    g = _vlb_backward_op(grad_kl.float().contiguous(), x0, log_x0_pred, z_t, t, alpha_bar, alpha, stats,
                         ctx.transition, ctx.backend)
    return None, g, None, None, None, None, None, None


_vlb_op.register_autograd(_vlb_backward, setup_context=_vlb_setup)


def vlb_kl(x0: torch.Tensor, log_x0_pred: torch.Tensor, z_t: torch.Tensor, t, schedule, *,
           transition: str = "uniform", backend: str = "auto") -> torch.Tensor:
    """KL(q(z_{t-1} | z_t, x0) || q(z_{t-1} | z_t, x0_pred)) per position (VQ-DDM eq. 24), fused.

    x0 [B, ...] int64 true tokens in [0, K), log_x0_pred [B, ..., K] the model's logits or
    log-probs of x0 (fp32/fp16/bf16), z_t [B, ...], t [B] in 1..T -> kl [B, ...] float32 in
    nats. At t = 1 the true posterior is one-hot at x0, so kl = -log p(x0 | z_1) of the
    model's posterior (multinomial-diffusion decoder term). Differentiable in log_x0_pred
    with a fused one-pass backward; no [B, L, K] temporaries on the kernel backends.
    "absorbing": 0 at unmasked positions, -c_t log p(x0) at masked ones.

        loss = vlb_kl(x0, logits, z_t, t, sched).sum(-1).mean()
    """
    flat, zt, t, name = _check(log_x0_pred, z_t, t, schedule, transition, "vlb_kl", backend)
    K = log_x0_pred.shape[-1]
    _args.tokens("x0", x0, log_x0_pred.shape[:-1], K, "K")
    args = (x0.reshape(-1).contiguous(), flat, zt, t, schedule.alpha_bar, schedule.alpha, transition)
    if (name == "cpu" and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and log_x0_pred.requires_grad)):
        # Eager without autograd: the registered kernel directly, as in posterior_sample.
        kl, _ = _vlb_cpu(*args)
    else:
        kl, _ = _vlb_op(*args, name)
    _args.nonfinite_rows("log_x0_pred", torch.isnan(kl.detach()).reshape(z_t.shape))
    return kl.reshape(z_t.shape)
