"""VectorQuantizer: one codebook, nearest-code search, EMA (PUT eq. 2) or gradient learning."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vqfast import ops
from vqfast.layout import same_format
from vqfast.ops import _validate
from vqfast.quantizers import distributed
from vqfast.quantizers.codebook import Codebook
from vqfast.quantizers.stats import perplexity, usage


class QuantizerLosses(NamedTuple):
    """total = commitment_weight * commitment (+ codebook when learned by gradient).
    commitment = mean((x - sg(z_q))^2); codebook = mean((sg(x) - z_q)^2) or None with EMA."""

    total: torch.Tensor
    commitment: torch.Tensor
    codebook: torch.Tensor | None


def losses(commitment: torch.Tensor, codebook: torch.Tensor | None, weight: float) -> QuantizerLosses:
    total = weight * commitment if codebook is None else weight * commitment + codebook
    return QuantizerLosses(total, commitment, codebook)


def to_channel_last(x: torch.Tensor, channel_first: bool) -> torch.Tensor:
    """The module input x ([..., dim], or [B, dim, ...] when channel_first) as [..., dim]."""
    _validate.tensor("x", x, min_dim=2 if channel_first else 1)
    return x.movedim(1, -1) if channel_first else x


def from_channel_last(x: torch.Tensor, channel_first: bool, like: torch.Tensor | None = None) -> torch.Tensor:
    """codes [..., dim] -> the module's layout; channel_first needs a batch dim: [B, ..., dim] -> [B, dim, ...],
    in the memory format of `like` (the module input; None: contiguous)."""
    if channel_first and x.dim() < 2:
        raise ValueError(f"indices must have a batch dim with channel_first (codes [B, dim, ...]), "
                         f"got codes of shape {tuple(x.shape)}")
    return same_format(x.movedim(-1, 1), like) if channel_first else x


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer with a straight-through gradient.

    dim, codebook_size: code size d and number of codes K. metric: "l2" or "cosine"
    (cosine normalizes x and the codes; z_q is then a unit vector). decay: EMA decay
    (PUT eq. 2, 0.99) or None to learn the codebook by gradient (codebook loss added).
    eps: Laplace smoothing of the EMA counts. kmeans_init: k-means on the first
    training batch. threshold_dead_code: EMA count below which a code is re-seeded from
    the batch (0/None: never). sync_distributed: all-reduce EMA statistics when
    torch.distributed is initialized (default True). channel_first: x is [B, dim, ...]
    instead of [..., dim]. seed: the module's generator (re-seeds, k-means init).

    forward(x) -> (z_q like x, indices [...] int64, QuantizerLosses). In training mode
    with EMA, the codebook is updated from this batch after quantizing it.

        vq = VectorQuantizer(256, 1024)
        z_q, idx, loss = vq(torch.randn(8, 64, 256)); loss.total.backward()
    """

    def __init__(self, dim: int, codebook_size: int, *, metric: str = "l2", decay: float | None = 0.99,
                 eps: float = 1e-5, commitment_weight: float = 0.25, kmeans_init: bool = False,
                 threshold_dead_code: float | None = 0.0, sync_distributed: bool = True,
                 channel_first: bool = False, seed: int = 0):
        super().__init__()
        self.metric = _validate.metric(metric)
        self.commitment_weight = _validate.real("commitment_weight", commitment_weight, low=0.0)
        self.kmeans_init, self.channel_first = kmeans_init, channel_first
        self.codebook_state = Codebook(dim, codebook_size, decay=decay, eps=eps,
                                       threshold_dead_code=threshold_dead_code, cosine=metric == "cosine",
                                       sync_distributed=sync_distributed, seed=seed)

    @property
    def dim(self) -> int:
        return self.codebook_state.dim

    @property
    def codebook_size(self) -> int:
        return self.codebook_state.codebook_size

    @property
    def codebook(self) -> torch.Tensor:
        """The current codebook [K, dim]."""
        return self.codebook_state.codes()

    def replace_codebook(self, centroids: torch.Tensor) -> None:
        """Install centroids [K', dim] as the codebook (ReFiT); the EMA restarts from them."""
        self.codebook_state.replace(centroids)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channel_last(x, self.channel_first)
        axis = "channel (dim 1)" if self.channel_first else "last"
        _validate.last_dim("x", x, self.dim, f"features on its {axis} axis")
        if self.metric == "cosine":
            x = F.normalize(x, dim=-1)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerLosses]:
        xl = self._flat(x)
        cb = self.codebook_state
        if self.training and self.kmeans_init and not bool(cb.initted):
            cb.init_from(xl)
        if self.training and cb.ema:
            # Search and the batch's EMA statistics in one pass over x (never slower than
            # quantize + ema_statistics: 0.96-1.0x their time on the CPU, N=65536 d=256).
            out, counts, sums = ops.quantize_with_statistics(xl, self.codebook, metric=self.metric)
            xd, idx = xl.detach(), out.indices
            distributed.run_update(lambda: cb.update(xd, idx, stats=cb.sync_statistics(counts, sums)))
        else:
            out = ops.quantize(xl, self.codebook, metric=self.metric)
        loss = losses(out.commit_loss, out.codebook_loss, self.commitment_weight)
        return from_channel_last(out.z_q, self.channel_first, like=x), out.indices, loss

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [...] in [0, K) -> codes [..., dim] (or [B, dim, ...] when channel_first)."""
        indices = _validate.indices("indices", indices, self.codebook_size)
        return from_channel_last(F.embedding(indices, self.codebook), self.channel_first)

    @torch.no_grad()
    def statistics(self, indices: torch.Tensor) -> dict[str, float]:
        """usage (share of codes used by indices) and perplexity of their histogram."""
        return {"usage": usage(indices, self.codebook_size), "perplexity": perplexity(indices, self.codebook_size)}
