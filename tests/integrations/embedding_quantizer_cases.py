"""Parity cases shared by taming's VectorQuantizer2 and diffusers' VectorQuantizer (the same
module in two packages): channel-first z [B, C, H, W], legacy/fixed beta, remap, index shapes."""
from __future__ import annotations

import numpy as np
import torch

import vqfast.integrations as vi
from tests.integrations.parity import assert_close, assert_codes_no_worse, assert_same_codes, leaf, twin

C, K = 8, 64


def check_parity(make, apply, name: str, dtype: torch.dtype, legacy: bool, train: bool) -> None:
    """Indices, z_q, loss and the gradients to z and to the embedding, patched vs unpatched."""
    torch.manual_seed(0)
    peer, ours = twin(make(K, C, 0.25, legacy=legacy).to(dtype).train(train))
    z = torch.randn(2, C, 6, 5, generator=torch.Generator().manual_seed(1)).to(dtype)
    up = torch.randn(2, C, 6, 5, generator=torch.Generator().manual_seed(2)).to(dtype)
    vi.reset_stats()
    z_ref, z_got = leaf(z), leaf(z)
    q_ref, l_ref, (_, _, i_ref) = peer(z_ref)
    with apply():
        q, loss, (perplexity, encodings, i) = ours(z_got)
    assert vi.stats()[name] == {"served": 1, "passed_through": 0}
    assert perplexity is None and encodings is None and i.shape == i_ref.shape and i.dtype == i_ref.dtype
    assert q.shape == q_ref.shape and q.dtype == q_ref.dtype and loss.dtype == l_ref.dtype
    codebook, rows = peer.embedding.weight, z.permute(0, 2, 3, 1).reshape(-1, C)
    if dtype == torch.float32:
        assert_same_codes(rows, codebook, i_ref, i)
    else:
        assert_codes_no_worse(rows, codebook, i_ref, i)
    if not torch.equal(i, i_ref):  # bf16: compare the rest where both picked the same codes
        return
    assert_close(q, q_ref, dtype, "z_q")
    assert_close(loss, l_ref, dtype, "loss")
    ((q_ref * up).sum() + l_ref).backward()
    ((q * up).sum() + loss).backward()
    assert_close(z_got.grad, z_ref.grad, dtype, "grad to z")
    assert_close(ours.embedding.weight.grad, peer.embedding.weight.grad, dtype, "grad to embedding")


def check_index_options(make, apply, tmp_path) -> None:
    """remap (the module's own remap_to_used, "extra" unknown index) and sane_index_shape."""
    used = tmp_path / "used.npy"
    np.save(used, np.arange(0, K, 2))
    for kwargs in (dict(remap=str(used), unknown_index="extra"), dict(sane_index_shape=True)):
        torch.manual_seed(0)
        peer, ours = twin(make(K, C, 0.25, **kwargs))
        z = torch.randn(2, C, 4, 3, generator=torch.Generator().manual_seed(1))
        _, _, (_, _, i_ref) = peer(z)
        with apply():
            _, _, (_, _, i) = ours(z)
        assert torch.equal(i, i_ref), kwargs
