"""The nearest-embedding quantizer that taming-transformers' VectorQuantizer2 and diffusers'
VectorQuantizer share (VQGAN, Esser et al. 2021, eq. 4), served by vqfast.ops.quantize.

z [B, C, H, W] -> (z_q [B, C, H, W], loss, (None, None, indices)): z_q the nearest code per
position with the straight-through gradient to z; loss = ||sg(z_q) - z||^2 + beta ||z_q - sg(z)||^2
as means (legacy: beta on the second term; else on the first); indices [B*H*W] (after the
module's remap: [B*H*W, 1]; with sane_index_shape: [B, H, W]).
"""
from __future__ import annotations

import torch

from vqfast import ops


def forward(module, z: torch.Tensor) -> tuple:
    """The module's forward on channel-first z, its nearest-code search, lookup and both loss
    terms in one vqfast.ops.quantize pass (no N x K distance matrix)."""
    weight = module.embedding.weight
    out = ops.quantize(z.permute(0, 2, 3, 1), weight)
    codebook_term = out.commit_loss.detach() if out.codebook_loss is None else out.codebook_loss
    commit_term = out.commit_loss
    if module.legacy:
        loss = commit_term + module.beta * codebook_term
    else:
        loss = module.beta * commit_term + codebook_term
    z_q = out.z_q.permute(0, 3, 1, 2).contiguous()
    idx = out.indices.reshape(-1)
    if module.remap is not None:
        idx = module.remap_to_used(idx.reshape(z.shape[0], -1)).reshape(-1, 1)
    if module.sane_index_shape:
        idx = idx.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
    return z_q, loss.to(torch.promote_types(z.dtype, weight.dtype)), (None, None, idx)
