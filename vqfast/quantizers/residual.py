"""ResidualQuantizer: RQ-VAE's residual quantization (Lee et al., CVPR 2022).

r_0 = x, k_i = nearest(r_{i-1}), r_i = r_{i-1} - e_{k_i}; one codebook shared by all
depths (shared_codebook=True, as RQ-VAE's 8x8x4 model) or one per level. EMA is fed
each level's residuals, level after level (RQ-VAE updates the shared codebook once
per level, so its decay applies depth times per step), each update followed by the
unused-code restart (EMA count < threshold_dead_code, RQ-VAE: 1). All levels are searched with the
codebook as it stood at the start of the step, in one residual_quantize call (RQ-VAE
also refreshes the shared codebook between levels; vqfast keeps the search fused).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqfast import ops
from vqfast.ops import _validate
from vqfast.quantizers import distributed
from vqfast.quantizers.codebook import Codebook
from vqfast.quantizers.stats import perplexity, usage
from vqfast.quantizers.vector import QuantizerLosses, from_channel_last, losses, to_channel_last


class ResidualQuantizer(nn.Module):
    """Depth-D residual quantizer.

    Arguments as VectorQuantizer (metric "l2"), plus depth and shared_codebook;
    threshold_dead_code defaults to 1.0 (RQ-VAE's restart of codes with EMA count < 1).
    forward(x [..., dim]) -> (z_q = sum of the D codes, indices [..., D],
    QuantizerLosses) with commitment = mean_i mean((x - sg(S_i))^2) over the partial
    sums S_i (RQ-VAE), total = commitment_weight * commitment (+ codebook loss when
    learned by gradient).

        rq = ResidualQuantizer(256, 1024, depth=4)
        z_q, idx, loss = rq(torch.randn(2, 64, 256))   # idx [2, 64, 4]
    """

    def __init__(self, dim: int, codebook_size: int, depth: int, *, shared_codebook: bool = True,
                 decay: float | None = 0.99, eps: float = 1e-5, commitment_weight: float = 0.25,
                 threshold_dead_code: float | None = 1.0, sync_distributed: bool = True,
                 channel_first: bool = False, seed: int = 0):
        super().__init__()
        depth = _validate.integer("depth", depth, low=1)
        kw = dict(decay=decay, eps=eps, threshold_dead_code=threshold_dead_code, sync_distributed=sync_distributed)
        n_books = 1 if shared_codebook else depth
        self.codebooks = nn.ModuleList(Codebook(dim, codebook_size, seed=seed + i, **kw) for i in range(n_books))
        self.depth, self.shared_codebook = depth, shared_codebook
        self.commitment_weight = _validate.real("commitment_weight", commitment_weight, low=0.0)
        self.channel_first = channel_first

    @property
    def dim(self) -> int:
        return self.codebooks[0].dim

    @property
    def codebook_size(self) -> int:
        return self.codebooks[0].codebook_size

    def level(self, i: int) -> Codebook:
        return self.codebooks[0 if self.shared_codebook else i]

    @property
    def codebook(self) -> torch.Tensor:
        """[K, dim] when shared, else [depth, K, dim]."""
        if self.shared_codebook:
            return self.codebooks[0].codes()
        return torch.stack([cb.codes() for cb in self.codebooks])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerLosses]:
        xl = to_channel_last(x, self.channel_first)
        _validate.last_dim("x", xl, self.dim, "features per position")
        out = ops.residual_quantize(xl, self.codebook, self.depth)
        if self.training and self.codebooks[0].ema:
            xd, idx = xl.detach(), out.indices
            distributed.run_update(lambda: self._update(xd, idx))
        loss = losses(out.commit_loss, out.codebook_loss, self.commitment_weight)
        return from_channel_last(out.z_q, self.channel_first, like=x), out.indices, loss

    @torch.no_grad()
    def _update(self, x: torch.Tensor, indices: torch.Tensor) -> None:
        r = x.reshape(-1, self.dim).float()
        idx = indices.reshape(-1, self.depth)
        codes = [self.level(i).embed.index_select(0, idx[:, i]) for i in range(self.depth)]
        for i in range(self.depth):  # level i learns from r_{i-1}, the residual it quantized
            self.level(i).update(r, idx[:, i])
            r = r - codes[i]

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [..., D] in [0, K) -> sum of the D codes [..., dim]."""
        indices = _validate.indices("indices", indices, self.codebook_size)
        _validate.last_dim("indices", indices, self.depth, "indices per position (depth)")
        total = sum(F.embedding(indices[..., i], self.level(i).codes()) for i in range(self.depth))
        return from_channel_last(total, self.channel_first)

    @torch.no_grad()
    def statistics(self, indices: torch.Tensor) -> dict[str, float]:
        """usage and perplexity of all levels' codes together (one shared codebook) or averaged per level."""
        K = self.codebook_size
        if self.shared_codebook:
            return {"usage": usage(indices, K), "perplexity": perplexity(indices, K)}
        per = [(usage(indices[..., i], K), perplexity(indices[..., i], K)) for i in range(self.depth)]
        return {"usage": sum(u for u, _ in per) / self.depth, "perplexity": sum(p for _, p in per) / self.depth}
