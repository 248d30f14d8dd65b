"""DualCodebookQuantizer: PUT's two codebooks (Sec. 3.1, supp. eq. 2).

Visible (unmasked) patch features are quantized with e, masked ones with e'; a masked
token's index is offset by K so the token space is K + K'. Each codebook keeps its own
EMA. The statistics of both come from ONE ema_statistics pass over the batch with
K + K' codes (the offset indices already route every row), then split.
"""
from __future__ import annotations

import torch
from torch import nn

from vqfast import ops
from vqfast.ops import _validate
from vqfast.quantizers import distributed
from vqfast.quantizers.codebook import Codebook
from vqfast.quantizers.stats import perplexity, usage
from vqfast.quantizers.vector import QuantizerLosses, from_channel_last, losses, to_channel_last


class DualCodebookQuantizer(nn.Module):
    """PUT dual codebook: e [K, dim] for visible features, e' [K', dim] for masked ones.

    Arguments as VectorQuantizer (metric "l2"), plus codebook_size_masked K' (default K).
    forward(x [..., dim] (or [B, dim, ...] with channel_first), visible [...] bool) ->
    (z_q like x, indices [...] with masked rows in [K, K + K'), QuantizerLosses).

        dq = DualCodebookQuantizer(256, 512)
        z_q, idx, loss = dq(torch.randn(4, 64, 256), torch.rand(4, 64) > 0.5)
    """

    def __init__(self, dim: int, codebook_size: int, codebook_size_masked: int | None = None, *,
                 decay: float | None = 0.99, eps: float = 1e-5, commitment_weight: float = 0.25,
                 threshold_dead_code: float | None = 0.0, sync_distributed: bool = True,
                 channel_first: bool = False, seed: int = 0):
        super().__init__()
        kw = dict(decay=decay, eps=eps, threshold_dead_code=threshold_dead_code, sync_distributed=sync_distributed)
        self.visible_codebook = Codebook(dim, codebook_size, seed=seed, **kw)
        self.masked_codebook = Codebook(dim, codebook_size if codebook_size_masked is None else codebook_size_masked,
                                        seed=seed + 1, **kw)
        self.commitment_weight = _validate.real("commitment_weight", commitment_weight, low=0.0)
        self.channel_first = channel_first

    @property
    def dim(self) -> int:
        return self.visible_codebook.dim

    @property
    def codebook_size(self) -> int:
        """Token space K + K'."""
        return self.visible_codebook.codebook_size + self.masked_codebook.codebook_size

    def forward(self, x: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerLosses]:
        xl = to_channel_last(x, self.channel_first)
        _validate.last_dim("x", xl, self.dim, "features per position")
        e, e2 = self.visible_codebook, self.masked_codebook
        out = ops.dual_codebook_quantize(xl, visible, e.codes(), e2.codes())
        if self.training and e.ema:
            xd, idx = xl.detach(), out.indices
            distributed.run_update(lambda: self._update(xd, visible, idx))
        loss = losses(out.commit_loss, out.codebook_loss, self.commitment_weight)
        return from_channel_last(out.z_q, self.channel_first, like=x), out.indices, loss

    @torch.no_grad()
    def _update(self, x: torch.Tensor, visible: torch.Tensor, indices: torch.Tensor) -> None:
        e, e2 = self.visible_codebook, self.masked_codebook
        K = e.codebook_size
        flat = x.reshape(-1, self.dim)
        counts, sums = ops.ema_statistics(flat, indices.reshape(-1), K + e2.codebook_size)
        distributed.all_reduce_sum_(counts, sums, enabled=e.sync_distributed)
        vis = visible.reshape(-1)
        # Dead codes are re-seeded from the rows their own codebook quantizes (a gather only then).
        e.update(None, None, (counts[:K].contiguous(), sums[:K].contiguous()), pool=lambda: flat[vis])
        e2.update(None, None, (counts[K:].contiguous(), sums[K:].contiguous()), pool=lambda: flat[~vis])

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [...] in [0, K + K') -> codes [..., dim] from e (< K) or e' (>= K)."""
        indices = _validate.indices("indices", indices, self.codebook_size)
        both = torch.cat([self.visible_codebook.codes(), self.masked_codebook.codes()])
        return from_channel_last(nn.functional.embedding(indices, both), self.channel_first)

    @torch.no_grad()
    def statistics(self, indices: torch.Tensor) -> dict[str, float]:
        """usage and perplexity over the joint token space K + K'."""
        return {"usage": usage(indices, self.codebook_size), "perplexity": perplexity(indices, self.codebook_size)}
