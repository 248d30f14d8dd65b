"""Oracle for k-means: brute-force Lloyd and AFK-MC2's chain, in float64."""
from __future__ import annotations

import torch

from vqfast.reference.nearest_code import code_distances


def lloyd(x: torch.Tensor, centroids: torch.Tensor, iters: int):
    """Lloyd's algorithm from the given centroids [K, d] with the full P x K distance matrix.

    Empty clusters take the points farthest from their centroid (largest distance
    first, ties: lowest row). Returns (centroids [K, d] fp64, assignments [P],
    inertia [iters + 1] fp64), inertia measured before each update and after the last.
    """
    x, c = x.double(), centroids.double().clone()
    K = c.shape[0]
    inertia = []
    for it in range(iters + 1):
        d = code_distances(x, c)
        best, idx = d.min(dim=1)
        inertia.append(best.sum())
        if it == iters:
            break
        counts = torch.bincount(idx, minlength=K)
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        c = sums / counts.clamp_min(1)[:, None].double()
        empty = (counts == 0).nonzero().squeeze(1)
        if empty.numel():
            far = torch.sort(best, descending=True, stable=True).indices[:empty.numel()]
            c[empty[:far.numel()]] = x[far]
    return c, idx, torch.stack(inertia)


def afkmc2_chain(x: torch.Tensor, first: int, q: torch.Tensor, candidates: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """AFK-MC2 (Bachem et al. 2016, Alg. 1) given its random draws: seeds [K] (row indices).

    Step i runs a Metropolis-Hastings chain over candidates[i-1] (drawn from q), with
    d(y) = squared distance to the nearest seed chosen so far: y replaces the current
    x when d(y) q(x) / (d(x) q(y)) > u.
    """
    x = x.double()
    chosen = [first]
    for i in range(candidates.shape[0]):
        cand = candidates[i]
        dist = code_distances(x[cand], x[chosen]).min(dim=1).values
        cur = 0
        for j in range(1, cand.numel()):
            if dist[j] * q[cand[cur]] > u[i, j] * dist[cur] * q[cand[j]]:
                cur = j
        chosen.append(int(cand[cur]))
    return torch.tensor(chosen, dtype=torch.long)
