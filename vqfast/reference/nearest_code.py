"""Oracle for nearest-codebook search and quantize."""
from __future__ import annotations

import torch
import torch.nn.functional as F

_ROWS = 4096  # rows per chunk: bounds the oracle's memory, not its meaning
_ELEMENTS = 1 << 23  # float64 elements per broadcast difference chunk


def code_distances(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """x [N, d], codebook [K, d] -> distances [N, K] in float64.

    l2: ||x - c||^2; cosine: 1 - <x/|x|, c/|c|> (zero vectors normalize to zero).
    Computed elementwise (not through a GEMM) so equal codes get bit-equal distances.
    """
    x, c = x.double(), codebook.double()
    if metric == "cosine":
        x, c = F.normalize(x, dim=1, eps=1e-12), F.normalize(c, dim=1, eps=1e-12)
    rows = max(1, _ELEMENTS // max(1, c.numel()))
    out = []
    for r0 in range(0, x.shape[0], rows):
        xc = x[r0:r0 + rows, None, :]
        out.append((xc - c).square().sum(-1) if metric == "l2" else 1 - (xc * c).sum(-1))
    return torch.cat(out) if out else x.new_empty(0, c.shape[0])


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., d], codebook [K, d] -> idx [...] int64, dist [...] float32.

    Ties go to the lowest index; codes at NaN distance never win; a row of x that is
    not finite gets idx 0 and dist NaN.
    """
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])
    idx = torch.zeros(rows.shape[0], dtype=torch.long, device=x.device)
    dist = torch.empty(rows.shape[0], dtype=torch.float32, device=x.device)
    for r0 in range(0, rows.shape[0], _ROWS):
        chunk = rows[r0:r0 + _ROWS]
        d = code_distances(chunk, codebook, metric).nan_to_num(nan=float("inf"), posinf=float("inf"))
        best, i = d.min(dim=1)  # first minimum = lowest index
        bad = ~torch.isfinite(chunk.double()).all(dim=1)
        idx[r0:r0 + _ROWS] = i.masked_fill(bad, 0)
        dist[r0:r0 + _ROWS] = best.float().masked_fill(bad, float("nan"))
    return idx.reshape(lead), dist.reshape(lead)


def quantize(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2"):
    """x [..., d] -> (z_q [..., d] straight-through, idx [...], commit_loss, codebook_loss).

    z_q = sg(c_idx) + (x - sg(x)): the value is exactly the code (in x's dtype; the textbook
    x + sg(c_idx - x) rounds in fp16/bf16), the gradient to x is the identity (straight-through);
    commit_loss = mean((x - sg(c_idx))^2);
    codebook_loss = mean((sg(x) - c_idx)^2) (its gradient reaches the codebook).
    """
    idx, _ = nearest_code(x.detach(), codebook.detach(), metric)
    codes = F.embedding(idx, codebook).to(x.dtype)
    commit = F.mse_loss(x.float(), codes.detach().float())
    codebook_loss = F.mse_loss(x.detach().float(), codes.float())
    return codes.detach() + (x - x.detach()), idx, commit, codebook_loss
