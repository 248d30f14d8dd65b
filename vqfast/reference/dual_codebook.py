"""Oracle for dual-codebook quantization (PUT Sec. 2-3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vqfast.reference.nearest_code import nearest_code


def dual_codebook_quantize(x: torch.Tensor, visible: torch.Tensor, e: torch.Tensor, e2: torch.Tensor,
                           metric: str = "l2"):
    """x [..., d], visible [...] bool, e [K, d], e2 [K2, d] ->
    (z_q [..., d] straight-through, idx [...], commit_loss, codebook_loss).

    Visible rows take their nearest code of e (idx in [0, K)); masked rows their
    nearest code of e2, with the index offset by K (idx in [K, K + K2)).
    z_q = sg(c) + (x - sg(x)) as in quantize; commit_loss = mean((x - sg(c))^2);
    codebook_loss = mean((sg(x) - c)^2).
    """
    K = e.shape[0]
    idx_v, _ = nearest_code(x.detach(), e.detach(), metric)
    idx_m, _ = nearest_code(x.detach(), e2.detach(), metric)
    codes = torch.where(visible[..., None], F.embedding(idx_v, e), F.embedding(idx_m, e2)).to(x.dtype)
    idx = torch.where(visible, idx_v, idx_m + K)
    commit = F.mse_loss(x.float(), codes.detach().float())
    codebook_loss = F.mse_loss(x.detach().float(), codes.float())
    return codes.detach() + (x - x.detach()), idx, commit, codebook_loss
