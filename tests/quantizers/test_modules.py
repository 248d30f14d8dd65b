"""VectorQuantizer, DualCodebookQuantizer, ResidualQuantizer: EMA steps against the reference
formulas, dead-code revival, losses, state_dict, autocast."""
import pytest
import torch
import torch.nn.functional as F

from vqfast.quantizers import DualCodebookQuantizer, ResidualQuantizer, VectorQuantizer
from vqfast.reference import ema as ref_ema
from vqfast.reference import nearest_code as ref_nc


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_vector_quantizer_ema_step_follows_eq2():
    vq = VectorQuantizer(12, 20, decay=0.9, eps=1e-5)
    cb0 = vq.codebook.clone()
    n0, s0 = vq.codebook_state.cluster_size.clone(), vq.codebook_state.embed_sum.clone()
    x = _x(3, 40, 12)
    z_q, idx, loss = vq(x)
    ref_idx, _ = ref_nc.nearest_code(x, cb0)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(z_q, cb0[idx])  # quantized with the codebook before the update
    counts, sums = ref_ema.ema_statistics(x.reshape(-1, 12), idx.reshape(-1), 20)
    want = ref_ema.ema_update_(n0, s0, counts, sums, 0.9, 1e-5)
    torch.testing.assert_close(vq.codebook, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vq.codebook_state.cluster_size, n0)
    torch.testing.assert_close(loss.commitment, F.mse_loss(x, cb0[idx]))
    assert loss.codebook is None and torch.allclose(loss.total, 0.25 * loss.commitment)
    vq.eval()
    before = vq.codebook.clone()
    vq(x)
    assert torch.equal(vq.codebook, before)  # eval mode never updates


def test_straight_through_and_gradient_learned_codebook():
    vq = VectorQuantizer(8, 16, decay=None, commitment_weight=0.5)
    x = _x(30, 8).requires_grad_()
    z_q, idx, loss = vq(x)
    assert loss.codebook is not None
    torch.testing.assert_close(loss.total, 0.5 * loss.commitment + loss.codebook)
    (z_q.sum() + loss.total).backward()
    cb = vq.codebook.detach()
    # d/dx [sum(z_q) + 0.5 mean((x - sg(c))^2)] = 1 + 0.5 * 2 (x - c) / numel
    torch.testing.assert_close(x.grad, 1 + (x.detach() - cb[idx]) / x.numel())
    assert vq.codebook_state.embed.grad is not None and vq.codebook_state.embed.grad.abs().sum() > 0


def test_channel_first_cosine_and_indices_to_codes():
    vq = VectorQuantizer(6, 10, metric="cosine", channel_first=True)
    vq.eval()
    x = _x(2, 6, 4, 5)
    z_q, idx, _ = vq(x)
    assert z_q.shape == x.shape and idx.shape == (2, 4, 5)
    torch.testing.assert_close(vq.indices_to_codes(idx), z_q)
    torch.testing.assert_close(z_q.norm(dim=1), torch.ones(2, 4, 5))
    with pytest.raises(ValueError, match="6 features"):
        vq(_x(2, 5, 4, 4))


def test_state_dict_round_trip_with_buffers():
    vq = VectorQuantizer(8, 16, threshold_dead_code=0.5)
    for s in range(3):
        vq(_x(50, 8, seed=s))
    other = VectorQuantizer(8, 16, seed=99)
    other.load_state_dict(vq.state_dict())
    for name, t in vq.state_dict().items():
        assert torch.equal(other.state_dict()[name], t), name
    assert {"codebook_state.cluster_size", "codebook_state.embed_sum"} <= set(vq.state_dict())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_half_inputs(dtype):
    vq = VectorQuantizer(16, 32)
    conv = torch.nn.Linear(16, 16)
    x = _x(64, 16)
    with torch.autocast("cpu", dtype=dtype):
        h = conv(x.to(dtype))
        z_q, idx, loss = vq(h)
    assert z_q.dtype == h.dtype and loss.total.dtype == torch.float32
    assert vq.codebook.dtype == torch.float32 and torch.isfinite(vq.codebook).all()
    loss.total.backward()
    assert conv.weight.grad is not None


def test_half_module_keeps_fp32_ema_state():
    vq = VectorQuantizer(8, 16).bfloat16()
    assert vq.codebook.dtype == torch.float32 and vq.codebook_state.cluster_size.dtype == torch.float32
    z_q, _, _ = vq(_x(20, 8).bfloat16())
    assert z_q.dtype == torch.bfloat16 and torch.isfinite(vq.codebook).all()


def test_dead_codes_revived_from_batch_rows():
    vq = VectorQuantizer(4, 8, decay=0.5, threshold_dead_code=0.6, seed=1)
    x = _x(100, 4) * 0.01 + 5  # far from every initial code: one code wins everything
    vq(x)
    st = vq.codebook_state
    assert torch.all(st.cluster_size >= 0.6)
    # revived codes are rows of the batch (global batch = this batch), with count 1
    revived = st.cluster_size == 1.0
    assert revived.sum() >= 6
    d = ref_nc.code_distances(vq.codebook[revived], x)
    assert torch.all(d.min(dim=1).values < 1e-10)


def test_kmeans_init_runs_once():
    vq = VectorQuantizer(4, 6, kmeans_init=True)
    x = torch.cat([torch.randn(50, 4) * 0.1 + 3 * k for k in range(6)])
    vq(x)
    assert bool(vq.codebook_state.initted)
    _, idx, _ = vq(x)
    assert torch.bincount(idx, minlength=6).min() > 0


def test_dual_codebook_routes_and_updates_each_codebook():
    dq = DualCodebookQuantizer(5, 7, 4, decay=0.8)
    e0, e20 = dq.visible_codebook.embed.clone(), dq.masked_codebook.embed.clone()
    n0, s0 = dq.visible_codebook.cluster_size.clone(), dq.visible_codebook.embed_sum.clone()
    m0, t0 = dq.masked_codebook.cluster_size.clone(), dq.masked_codebook.embed_sum.clone()
    x = _x(3, 20, 5)
    vis = torch.rand(3, 20, generator=torch.Generator().manual_seed(1)) > 0.4
    z_q, idx, loss = dq(x, vis)
    iv, _ = ref_nc.nearest_code(x, e0)
    im, _ = ref_nc.nearest_code(x, e20)
    assert torch.equal(idx, torch.where(vis, iv, im + 7))
    torch.testing.assert_close(z_q, torch.where(vis[..., None], e0[iv], e20[im]))
    c, s = ref_ema.ema_statistics(x[vis], iv[vis], 7)
    torch.testing.assert_close(dq.visible_codebook.embed, ref_ema.ema_update_(n0, s0, c, s, 0.8, 1e-5))
    c, s = ref_ema.ema_statistics(x[~vis], im[~vis], 4)
    torch.testing.assert_close(dq.masked_codebook.embed, ref_ema.ema_update_(m0, t0, c, s, 0.8, 1e-5))
    assert dq.codebook_size == 11 and 0 < dq.statistics(idx)["usage"] <= 1


def test_dual_codebook_revives_each_codebook_from_its_own_rows():
    dq = DualCodebookQuantizer(3, 6, 5, decay=0.5, threshold_dead_code=0.9)
    x = torch.cat([_x(40, 3) * 0.01 + 4, _x(40, 3, seed=1) * 0.01 - 4])  # visible near +4, masked near -4
    vis = torch.arange(80) < 40
    dq(x, vis)
    e, e2 = dq.visible_codebook, dq.masked_codebook
    assert torch.all(e.cluster_size >= 0.9) and torch.all(e2.cluster_size >= 0.9)
    assert torch.all(e.embed[e.cluster_size == 1.0] > 3) and torch.all(e2.embed[e2.cluster_size == 1.0] < -3)
    assert (e.cluster_size == 1.0).sum() >= 4 and (e2.cluster_size == 1.0).sum() >= 3


@pytest.mark.parametrize("shared", [True, False])
def test_residual_quantizer_levels_and_ema(shared):
    rq = ResidualQuantizer(6, 9, depth=3, shared_codebook=shared, decay=0.7, threshold_dead_code=0)
    books = [rq.level(i).embed.clone() for i in range(3)]
    state = {id(rq.level(i)): (rq.level(i).cluster_size.clone(), rq.level(i).embed_sum.clone()) for i in range(3)}
    x = _x(40, 6)
    z_q, idx, loss = rq(x)
    r, partial, total_commit = x.clone(), torch.zeros_like(x), 0.0
    for i in range(3):
        k, _ = ref_nc.nearest_code(r, books[i])
        assert torch.equal(idx[:, i], k)
        n, s = state[id(rq.level(i))]
        ref_ema.ema_update_(n, s, *ref_ema.ema_statistics(r, k, 9), 0.7, 1e-5)  # level i learns from r_{i-1}
        r, partial = r - books[i][k], partial + books[i][k]
        total_commit += F.mse_loss(x, partial) / 3
    torch.testing.assert_close(z_q, partial)
    torch.testing.assert_close(loss.commitment, total_commit)
    for i in range(3):
        n, s = state[id(rq.level(i))]
        torch.testing.assert_close(rq.level(i).cluster_size, n)
        torch.testing.assert_close(rq.level(i).embed_sum, s, rtol=1e-5, atol=1e-5)


def test_residual_restart_of_unused_codes():
    rq = ResidualQuantizer(4, 16, depth=2, decay=0.5)  # threshold 1 (RQ-VAE)
    rq(_x(6, 4) + 10)  # fewer rows than codes: RQ-VAE tiles the batch with noise
    assert torch.all(rq.level(0).cluster_size >= 1)


@pytest.mark.parametrize("kind", ["vector", "dual", "residual"])
def test_deferred_codebook_updates_equal_immediate_ones(kind):
    """Updates queued by `deferred_updates` (a DDP step runs them after the backward) leave the
    same codebook as running them inside the forward, and leave it untouched until the block ends."""
    from vqfast.quantizers.distributed import deferred_updates

    def make():
        torch.manual_seed(0)
        if kind == "vector":
            return VectorQuantizer(8, 16, channel_first=True)
        if kind == "dual":
            return DualCodebookQuantizer(8, 16, 16, channel_first=True)
        return ResidualQuantizer(8, 16, depth=3, channel_first=True)

    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, 8, 4, 5, generator=g) for _ in range(3)]
    visible = [torch.rand(2, 4, 5, generator=g) > 0.5 for _ in range(3)]
    now, later = make().train(), make().train()
    for x, vis in zip(batches, visible):
        args = (x, vis) if kind == "dual" else (x,)
        ref = now(*args)
        before = {k: v.clone() for k, v in later.state_dict().items()}
        with deferred_updates():
            got = later(*args)
            assert all(torch.equal(v, later.state_dict()[k]) for k, v in before.items())
        assert torch.equal(ref[1], got[1]) and torch.equal(ref[0], got[0])
        a, b = now.state_dict(), later.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(v, make().state_dict()[k]) for k, v in later.state_dict().items())
