"""k-means for codebooks (VQ-DDM Sec. 3.2): AFK-MC2 / k-means++ / random seeding,
then Lloyd iterations built from nearest_code_with_statistics (assignment and per-cluster
sums in one pass over x), so no P x K matrix is ever held.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from vqfast import ops
from vqfast.ops import _validate
from vqfast.quantizers import distributed
from vqfast.random import as_generator

INITS = ("afkmc2", "kmeans++", "random")


class KMeansResult(NamedTuple):
    """centroids [K, d] fp32; assignments [P] int64 (nearest centroid of the returned
    centroids); inertia [iters_run + 1] fp64: sum of squared distances to the nearest
    centroid before each update and after the last."""

    centroids: torch.Tensor
    assignments: torch.Tensor
    inertia: torch.Tensor


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x [n, d], c [d] -> ||x - c||^2 [n] fp32."""
    return (x - c).square().sum(1)


def afkmc2_draws(x: torch.Tensor, K: int, m: int, generator: torch.Generator | None):
    """The random draws of AFK-MC2: first center, proposal q [P] fp64, candidates [K-1, m], uniforms [K-1, m].

    q(x) = 1/2 d(x, c1)^2 / sum_x' d(x', c1)^2 + 1/(2P) (Bachem et al. 2016, Alg. 1).
    """
    P = x.shape[0]
    first = int(torch.randint(P, (1,), generator=generator))
    d1 = _sq_dist(x, x[first]).double().cpu()
    total = d1.sum()
    q = (0.5 * d1 / total if total > 0 else torch.zeros_like(d1)) + 0.5 / P
    # K = 1 needs no chain (multinomial refuses to draw 0 samples)
    cand = (torch.multinomial(q, (K - 1) * m, replacement=True, generator=generator).view(K - 1, m) if K > 1
            else torch.zeros(0, m, dtype=torch.long))
    u = torch.rand(max(K - 1, 0), m, generator=generator, dtype=torch.float64)
    return first, q, cand, u


def _chain(dists: list[float], qs: list[float], us: list[float]) -> int:
    """Metropolis-Hastings chain over m candidates (AFK-MC2 Alg. 1 lines 6-9) -> position of the winner.

    Accept y over the current x when d(y) q(x) > u d(x) q(y) (division-free form of
    d(y) q(x) / (d(x) q(y)) > u)."""
    cur = 0
    for j in range(1, len(dists)):
        if dists[j] * qs[cur] > us[j] * dists[cur] * qs[j]:
            cur = j
    return cur


@contextlib.contextmanager
def _one_thread():
    """Run the many tiny per-step ops of a chain inline: on a loaded machine every parallel
    region of a small op waits for a scheduler slice, which dominated the seeding time."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def afkmc2(x: torch.Tensor, K: int, chain_length: int = 200,
           generator: torch.Generator | int | None = None) -> torch.Tensor:
    """AFK-MC2 seeding (Bachem et al. 2016): x [P, d] (P >= K) -> row indices [K] of the chosen seeds.

    Each seed runs a Markov chain of `chain_length` candidates drawn from q, so the
    cost is O(K^2 m d) independent of P after one pass for q. Candidate distances to
    the seeds chosen before their block come from one nearest_code call per block of
    steps; within a block they are updated one seed at a time. generator: torch.Generator, int seed or None.
    """
    _check(x, K, 0, chain_length)
    first, q, cand, u = afkmc2_draws(x, K, chain_length, as_generator(generator))
    chosen = [first]
    centers = x.new_empty(K, x.shape[1], dtype=torch.float32)
    centers[0] = x[first].float()
    c_sq = torch.zeros(K, dtype=torch.float32, device=x.device)  # ||seed||^2, filled as seeds are chosen
    block = 32
    for s in range(1, K, block):
        b = min(block, K - s)
        rows = cand[s - 1:s - 1 + b].to(x.device)
        pts = x[rows.reshape(-1)].float()
        _, cd = ops.nearest_code(pts, centers[:s])  # to the seeds chosen before this block
        cd = cd.view(b, chain_length)
        pts = pts.view(b, chain_length, -1)
        p_sq = pts.square().sum(-1)
        with _one_thread():
            for j in range(b):
                if j:  # and to the j seeds chosen earlier in this block: an [m, j] product
                    d_new = torch.addmm(c_sq[s:s + j], pts[j], centers[s:s + j].T, alpha=-2).add_(p_sq[j, :, None])
                    cd[j] = torch.minimum(cd[j], d_new.amin(dim=1).clamp_min_(0))
                i = s - 1 + j
                win = _chain(cd[j].tolist(), q[cand[i]].tolist(), u[i].tolist())
                chosen.append(int(cand[i, win]))
                centers[s + j] = pts[j, win]
                c_sq[s + j] = p_sq[j, win]
    return torch.tensor(chosen, dtype=torch.long)


def kmeans_plus_plus(x: torch.Tensor, K: int, generator: torch.Generator | int | None = None) -> torch.Tensor:
    """k-means++ D^2 seeding (Arthur & Vassilvitskii 2007): x [P, d] (P >= K) -> row indices [K].
    O(P K d): K passes over x. generator: torch.Generator, int seed or None."""
    _check(x, K, 0, 1)
    generator = as_generator(generator)
    P = x.shape[0]
    chosen = [int(torch.randint(P, (1,), generator=generator))]
    mind = _sq_dist(x.float(), x[chosen[0]].float()).double()
    for _ in range(1, K):
        w = mind.cpu() if mind.sum() > 0 else torch.ones(P, dtype=torch.float64)
        chosen.append(int(torch.multinomial(w, 1, generator=generator)))
        mind = torch.minimum(mind, _sq_dist(x.float(), x[chosen[-1]].float()).double())
    return torch.tensor(chosen, dtype=torch.long)


def seed_centroids(x: torch.Tensor, K: int, init: str = "afkmc2", generator: torch.Generator | None = None,
                   chain_length: int = 200) -> torch.Tensor:
    """Initial centroids [K, d] fp32 from rows of x [P, d]."""
    if init == "afkmc2":
        rows = afkmc2(x, K, chain_length, generator)
    elif init == "kmeans++":
        rows = kmeans_plus_plus(x, K, generator)
    elif init == "random":
        rows = torch.randperm(x.shape[0], generator=generator)[:K]
    else:
        raise ValueError(f"init must be one of {INITS} or a [K, d] tensor, got {init!r}")
    return x[rows.to(x.device)].float().contiguous()


def reseed_empty(centroids: torch.Tensor, counts: torch.Tensor, x: torch.Tensor, dist: torch.Tensor) -> None:
    """Empty clusters take the points farthest from their centroid (largest dist first, ties:
    lowest row), in place. The caller broadcasts the result when distributed."""
    empty = (counts == 0).nonzero().squeeze(1)
    if empty.numel():
        far = torch.sort(dist.nan_to_num(float("-inf")), descending=True, stable=True).indices[:empty.numel()]
        centroids[empty[:far.numel()]] = x[far].float()


def _check(x, K, iters, chain_length) -> None:
    _validate.tensor("x", x, dim=2)
    K = _validate.integer("K", K, low=1)
    if x.shape[0] < K:
        raise ValueError(f"x has P={x.shape[0]} rows but K={K} centroids were asked: need P >= K")
    _validate.integer("iters", iters, low=0)
    _validate.integer("chain_length", chain_length, low=1)


def kmeans(x: torch.Tensor, K: int, iters: int = 25, init: str | torch.Tensor = "afkmc2", *,
           generator: torch.Generator | int | None = None, chain_length: int = 200, tol: float = 0.0,
           sync_distributed: bool = False) -> KMeansResult:
    """Lloyd's k-means: x [P, d] (fp32/fp16/bf16) -> KMeansResult(centroids [K, d], assignments [P], inertia).

    init: "afkmc2" (chain_length m, VQ-DDM uses m = 200), "kmeans++", "random", or a
    [K, d] tensor. Each iteration is one nearest_code_with_statistics pass (assignment and
    update statistics with x read once);
    empty clusters are re-seeded with the farthest points. Stops early when the relative
    inertia decrease is <= tol. With sync_distributed (torch.distributed initialized),
    every rank passes its shard of the points: seeds and re-seeds come from rank 0 and
    the statistics are all-reduced, so every rank returns the same centroids.

        res = vqfast.kmeans(torch.randn(20000, 64), K=512, iters=25, generator=torch.Generator().manual_seed(0))
    """
    _check(x, K, iters, chain_length)
    generator = as_generator(generator)
    x = x.detach().contiguous()
    if isinstance(init, torch.Tensor):
        _validate.shape("init", init, (K, x.shape[1]), "[K, d]")
        centroids = init.detach().float().clone().to(x.device)
    else:
        centroids = seed_centroids(x, K, init, generator, chain_length)
    distributed.broadcast_(centroids, enabled=sync_distributed)
    inertia = []
    for it in range(iters + 1):
        if it == iters:  # the final assignment needs no statistics
            idx, dist = ops.nearest_code(x, centroids)
        else:  # assignment and the update's statistics in one pass over x
            idx, dist, counts, sums = ops.nearest_code_with_statistics(x, centroids)
        total = dist.double().sum()
        distributed.all_reduce_sum_(total, enabled=sync_distributed)
        inertia.append(total)
        if it == iters or (it and tol > 0 and inertia[-2] - total <= tol * total):
            break
        distributed.all_reduce_sum_(counts, sums, enabled=sync_distributed)
        centroids = sums / counts.clamp_min(1)[:, None]
        if bool((counts == 0).any()):
            reseed_empty(centroids, counts, x, dist)
            distributed.broadcast_(centroids, enabled=sync_distributed)
    return KMeansResult(centroids, idx, torch.stack(inertia))
