"""Oracle for residual quantization (RQ-VAE)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vqfast.ops.residual import level_codebooks
from vqfast.reference.nearest_code import nearest_code


def residual_quantize(x: torch.Tensor, codebook: torch.Tensor, depth: int, metric: str = "l2"):
    """x [..., d], codebook [K, d] or [depth, K, d] ->
    (z_q [..., d] straight-through, idx [..., depth], commit_loss, codebook_loss).

    r_0 = x; k_i = nearest(r_{i-1}); r_i = r_{i-1} - c_{k_i} (residuals in fp32).
    z_q is the sum of the depth codes, S_depth (summed in fp32 in level order).
    commit_loss = mean_i mean((x - sg(S_i))^2) over the partial sums S_i (RQ-VAE);
    codebook_loss = mean_i mean((sg(x) - S_i)^2): its gradient reaches the codes.
    """
    r = x.detach().float()
    idx, codes = [], []
    for cb in level_codebooks(codebook, depth):
        k, _ = nearest_code(r, cb.detach(), metric)
        c = F.embedding(k, cb).float()
        r = r - c.detach()
        idx.append(k)
        codes.append(c)
    partial = torch.stack(codes, dim=-2).cumsum(dim=-2)  # [..., depth, d]: S_1 .. S_depth
    xf = x.float().unsqueeze(-2)
    commit = F.mse_loss(xf.expand_as(partial), partial.detach())
    codebook_loss = F.mse_loss(xf.detach().expand_as(partial), partial)
    z_q = partial[..., -1, :].to(x.dtype)
    return x + (z_q - x).detach(), torch.stack(idx, dim=-1), commit, codebook_loss
