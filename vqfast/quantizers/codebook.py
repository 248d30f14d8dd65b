"""One codebook and the state that learns it: EMA buffers (PUT eq. 2) or a gradient Parameter.

Shared by VectorQuantizer, DualCodebookQuantizer and ResidualQuantizer.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from vqfast import ops
from vqfast.ops import _validate
from vqfast.quantizers import distributed
from vqfast.random import as_generator


class Codebook(nn.Module):
    """K codes of size dim, learned by EMA (decay given) or by gradient (decay None).

    Buffers (EMA): `embed` [K, dim] (the codebook), `cluster_size` [K], `embed_sum`
    [K, dim]; all fp32 and saved in the state_dict. With decay None, `embed` is an
    nn.Parameter. Dead codes (EMA count < threshold_dead_code after an update) are
    re-seeded from batch vectors drawn by rank 0 from `generator` (RQ-VAE's restart;
    their count is reset to max(1, threshold)).
    """

    def __init__(self, dim: int, codebook_size: int, *, decay: float | None = 0.99, eps: float = 1e-5,
                 threshold_dead_code: float | None = 0.0, cosine: bool = False,
                 sync_distributed: bool | None = None, seed: int = 0):
        super().__init__()
        dim = _validate.integer("dim", dim, low=1)
        codebook_size = _validate.integer("codebook_size", codebook_size, low=1)
        if decay is not None:  # None: learned by gradient
            decay = _validate.real("decay", decay, low=0.0, high=1.0, high_open=True)
        eps = _validate.real("eps", eps, low=0.0)
        self.dim, self.codebook_size, self.decay, self.eps = dim, codebook_size, decay, eps
        self.threshold_dead_code = _validate.real("threshold_dead_code", threshold_dead_code or 0.0)
        self.cosine = cosine
        # None: all-reduce whenever torch.distributed is initialized.
        self.sync_distributed = True if sync_distributed is None else sync_distributed
        self.generator = as_generator(_validate.integer("seed", seed))
        # drawn on the CPU generator, then put where modules are being built (from_preset(device=...))
        init = torch.randn(codebook_size, dim, generator=self.generator, device="cpu").to(torch.get_default_device())
        if cosine:
            init = nn.functional.normalize(init, dim=1)
        if decay is None:
            self.embed = nn.Parameter(init)
        else:
            self.register_buffer("embed", init)
            self.register_buffer("cluster_size", torch.ones(codebook_size))
            self.register_buffer("embed_sum", init.clone())
        self.register_buffer("initted", torch.tensor(False))

    def _apply(self, fn, recurse=True):
        # module.half()/.bfloat16() must not round the EMA state: it accumulates tiny (1 - decay) steps.
        super()._apply(fn, recurse)
        if self.ema:
            for name in ("embed", "cluster_size", "embed_sum"):
                t = getattr(self, name)
                if t.is_floating_point() and t.dtype != torch.float32:
                    setattr(self, name, t.float())
        return self

    @property
    def ema(self) -> bool:
        return self.decay is not None

    def codes(self) -> torch.Tensor:
        """The codebook as searched: [K, dim] (unit rows for cosine; differentiable when learned)."""
        if self.cosine and not self.ema:
            return nn.functional.normalize(self.embed, dim=1)
        return self.embed

    @torch.no_grad()
    @torch.inference_mode(False)  # new state must be normal tensors (a first training step under inference_mode)
    def replace(self, centroids: torch.Tensor, count: float = 1.0) -> None:
        """Set the codebook to centroids [K', dim] (K' may differ from K: ReFiT) and restart the EMA
        state from it with every code's count = `count`."""
        _validate.tensor("centroids", centroids, dtypes=None, dim=2)
        _validate.last_dim("centroids", centroids, self.dim, "features per code (dim)")
        centroids = centroids.detach().float().to(self.embed.device)
        if self.cosine:
            centroids = nn.functional.normalize(centroids, dim=1)
        self.codebook_size = centroids.shape[0]
        if self.ema:
            self.embed = centroids.clone()
            self.cluster_size = torch.full((self.codebook_size,), float(count), device=centroids.device)
            self.embed_sum = centroids * float(count)
        else:
            self.embed = nn.Parameter(centroids.clone())
        self.initted.fill_(True)

    def _sync(self) -> bool:
        return distributed.active(self.sync_distributed)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor, iters: int = 10) -> None:
        """k-means init (once): rank 0 clusters its batch and broadcasts the centroids. A batch
        with no rows on any rank leaves the codebook as it is (the next batch initializes it)."""
        from vqfast.quantizers.clustering import kmeans

        x = x.detach().reshape(-1, self.dim).float()
        if distributed.global_rows(x.shape[0], x.device, enabled=self._sync())[1] == 0:
            return
        if x.shape[0] < self.codebook_size:  # too few rows: tile with noise as the restart does
            x = distributed.sample_rows(x, self.codebook_size, self.generator, 0.01 / math.sqrt(self.dim), enabled=False)
        centroids = kmeans(x, self.codebook_size, iters=iters, init="kmeans++", generator=self.generator).centroids
        self.replace(distributed.broadcast_(centroids.contiguous(), enabled=self._sync()))

    @torch.no_grad()
    def statistics(self, x: torch.Tensor, idx: torch.Tensor, K: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-code counts and sums of this batch, all-reduced over ranks when synced."""
        counts, sums = ops.ema_statistics(x.reshape(-1, x.shape[-1]), idx.reshape(-1), K or self.codebook_size)
        return self.sync_statistics(counts, sums)

    @torch.no_grad()
    def sync_statistics(self, counts: torch.Tensor, sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """counts [K], sums [K, dim] of this rank's batch, all-reduced over ranks when synced (in place)."""
        distributed.all_reduce_sum_(counts, sums, enabled=self.sync_distributed)
        return counts, sums

    @torch.no_grad()
    def update(self, x: torch.Tensor | None, idx: torch.Tensor | None,
               stats: tuple[torch.Tensor, torch.Tensor] | None = None,
               pool: Callable[[], torch.Tensor] | None = None) -> None:
        """One EMA step from batch vectors x [..., dim] assigned to idx [...] (or from precomputed,
        already synced stats), then dead codes are re-seeded from rows of x (or of pool())."""
        if stats is None and (x is None or idx is None):
            raise ValueError("Codebook.update needs x and idx, or stats=(counts, sums)")
        counts, sums = stats if stats is not None else self.statistics(x, idx)
        new = ops.ema_update_(self.cluster_size, self.embed_sum, counts, sums, self.decay, self.eps)
        # A code with no EMA mass left (decay 0 or eps 0 and no members: 0 / 0) keeps its vector.
        new = torch.where(new.isfinite().all(1, keepdim=True), new, self.embed)
        if self.cosine:
            new = nn.functional.normalize(new, dim=1)
        self.embed.copy_(new)
        self.revive_dead(pool if pool is not None else (lambda: x))

    @torch.no_grad()
    def revive_dead(self, pool: Callable[[], torch.Tensor]) -> int:
        """Re-seed codes whose EMA count is below the threshold from rows of pool() [..., dim];
        returns how many (pool is only evaluated when some code is dead)."""
        if self.threshold_dead_code <= 0 or not self.ema:
            return 0
        dead = (self.cluster_size < self.threshold_dead_code).nonzero().squeeze(1)
        n = dead.numel()  # the same on every rank: cluster_size is computed from all-reduced counts
        if n == 0:
            return 0
        rows = distributed.sample_rows(pool(), n, self.generator, 0.01 / math.sqrt(self.dim),
                                       enabled=self.sync_distributed)
        if rows is None:
            return 0
        if self.cosine:
            rows = nn.functional.normalize(rows, dim=1)
        count = max(1.0, self.threshold_dead_code)
        self.embed[dead] = rows
        self.embed_sum[dead] = rows * count
        self.cluster_size[dead] = count
        return n
