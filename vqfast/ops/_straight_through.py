"""Straight-through output and commitment loss of the quantize ops, from the kernel's outputs.

The kernels return the gathered codes and each row's squared error ||x - z_q||^2, so
the op needs no extra pass over x: z_q *is* the codes tensor (its value exactly the
chosen code rows) and commit_loss = sum(sq_err) / numel. When x requires grad, one
autograd function gives z_q the identity gradient to x (straight-through) and the
commitment loss its gradient 2 (x - z_q) / numel, without the temporaries of
x + (z_q - x).detach() and mse_loss.
"""
from __future__ import annotations

import torch


def row_sq_err(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """x, codes [N, d] -> ||x - codes||^2 per row [N] fp64 (backends whose kernel does not return it)."""
    return (x.float() - codes.float()).square().sum(1).double()


class _StraightThrough(torch.autograd.Function):
    """(x, codes, commit) -> (z_q, commit): values codes and commit; grads to x only."""

    @staticmethod
    def forward(ctx, x, codes, commit):
        ctx.save_for_backward(x, codes)
        return codes.view_as(codes), commit.view_as(commit)

    @staticmethod
    def backward(ctx, grad_z, grad_commit):
        x, codes = ctx.saved_tensors
        diff, scale = x.float() - codes.float(), grad_commit.float() * (2.0 / max(x.numel(), 1))  # empty x: no term
        # In place unless a graph of this backward is recorded (create_graph: double backward).
        term = diff * scale if torch.is_grad_enabled() else diff.mul_(scale)
        return grad_z + term.to(x.dtype), None, None


def straight_through(x: torch.Tensor, codes: torch.Tensor, sq_err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., d], codes [..., d] (x's dtype, no grad needed), sq_err [N] fp64 ->
    (z_q, commit_loss): z_q equals codes with the identity gradient to x; commit_loss =
    mean((x - sg(z_q))^2) as an fp32 scalar, differentiable in x."""
    commit = (sq_err.sum() / x.numel()).float()  # NaN for an empty x, as mse_loss
    if torch.is_grad_enabled() and x.requires_grad:
        return _StraightThrough.apply(x, codes.detach(), commit)
    return codes.detach(), commit
