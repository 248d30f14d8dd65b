"""vector-quantize-pytorch patched vs unpatched, side by side on its own modules: same indices
(ties: see parity.assert_same_codes), outputs, losses, gradients to the input and to a learnable
codebook, and EMA buffers after several training steps; options vqfast cannot serve pass through."""
import pytest
import torch

import vqfast.integrations as vi
from tests.integrations.parity import assert_close, assert_no_worse, assert_same_codes, leaf, twin

vqp = pytest.importorskip("vector_quantize_pytorch")
from vector_quantize_pytorch import vector_quantize_pytorch as vqp_module  # noqa: E402

CODEBOOK = "vector_quantize_pytorch.Codebook.forward"
DIM, K, STEPS = 32, 64, 3

SERVED = {
    "default": dict(),  # EMA codebook, rotation-trick estimator
    "cosine": dict(use_cosine_sim=True),
    "straight_through": dict(rotation_trick=False),
    "kmeans_init": dict(kmeans_init=True, kmeans_iters=4),
    "dead_codes": dict(threshold_ema_dead_code=2),
    "heads_shared": dict(heads=2, codebook_dim=16),
    "heads_separate": dict(heads=2, separate_codebook_per_head=True, codebook_dim=16),
    "learnable": dict(learnable_codebook=True, ema_update=False),
    "projection": dict(codebook_dim=16),
}


def _inputs(dtype, shape=(4, 50, DIM), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype) for _ in range(STEPS)]


def _run(vq, xs, train, patched):
    """STEPS forwards (and backwards in training) -> outputs, grads to x, the codebook's state."""
    vq.train(train)
    outs, grads = [], []
    for step, x in enumerate(xs):
        x = leaf(x, train)
        torch.manual_seed(step)  # the peer's own randomness (k-means sampling, dead-code draws) alike
        with (vi.apply_to_vector_quantize_pytorch() if patched else torch.enable_grad()):
            q, idx, loss = vq(x)
        if train:
            g = torch.randn(q.shape, generator=torch.Generator().manual_seed(step)).to(q.dtype)
            ((q * g).sum() + loss.sum()).backward()
            grads.append(x.grad)
        outs.append((x.detach(), q.detach(), idx, loss.detach()))
    cb = vq._codebook
    return outs, grads, {n: b.detach().clone() for n, b in cb.state_dict().items()}, \
        (cb.embed.grad.clone() if isinstance(cb.embed, torch.nn.Parameter) and cb.embed.grad is not None else None)


@pytest.mark.parametrize("train, dtype", [(True, torch.float32), (True, torch.bfloat16), (False, torch.float32)],
                         ids=["train-fp32", "train-bf16", "eval-fp32"])  # eval-bf16 runs the eval-fp32 search
@pytest.mark.parametrize("cfg", list(SERVED))
def test_vector_quantize_parity(cfg, train, dtype):
    if cfg == "projection" and dtype != torch.float32:
        pytest.skip("the peer's fp32 projection Linear rejects bf16 inputs, patched or not")
    torch.manual_seed(0)
    peer, ours = twin(vqp.VectorQuantize(dim=DIM, codebook_size=K, **SERVED[cfg]))  # fp32 module, fp32 or bf16 inputs
    oracle = twin(peer)[1]
    xs = _inputs(dtype)
    vi.reset_stats()
    ref, ref_grads, ref_state, ref_cb_grad = _run(peer, xs, train, patched=False)
    got, got_grads, got_state, got_cb_grad = _run(ours, xs, train, patched=True)
    assert vi.stats()[CODEBOOK] == {"served": STEPS, "passed_through": 0}
    if dtype != torch.float32:  # the peer rounds its own bf16 ops: measure both against its fp32 run
        exact, exact_grads, _, _ = _run(oracle, [x.float() for x in xs], train, patched=False)
        for (_, q_ref, _, _), (_, q, _, _), (_, q_32, _, _) in zip(ref, got, exact):
            assert_no_worse(q, q_ref, q_32, "quantized")
        for g_ref, g, g_32 in zip(ref_grads, got_grads, exact_grads):
            assert_no_worse(g, g_ref, g_32, "grad to x")
        ref_grads = got_grads = []
    codebook = ref_state["embed"]
    for (x, q_ref, i_ref, l_ref), (_, q, i, l) in zip(ref, got):
        if cfg not in ("heads_shared", "heads_separate", "projection"):  # rows of x are the searched rows
            assert_same_codes(x.float(), codebook.reshape(-1, codebook.shape[-1]) if codebook.shape[0] == 1 else
                              codebook[0], i_ref, i, "cosine" if cfg == "cosine" else "l2")
        if torch.equal(i_ref, i):
            assert_close(q, q_ref, dtype, "quantized")
            assert_close(l, l_ref, dtype, "loss")
    for g_ref, g in zip(ref_grads, got_grads):
        assert_close(g, g_ref, dtype, "grad to x")
    for name in ("embed", "embed_avg", "cluster_size"):
        assert_close(got_state[name], ref_state[name], torch.float32, name)  # buffers are fp32 sums of fp32 rows
    if ref_cb_grad is not None:
        assert_close(got_cb_grad, ref_cb_grad, torch.float32, "grad to codebook")


@pytest.mark.parametrize("channel_last, fmap", [(True, False), (False, False), (True, True)],
                         ids=["b_n_d", "b_d_n", "image_fmap"])
def test_channel_first_inputs(channel_last, fmap):
    torch.manual_seed(0)
    peer, ours = twin(vqp.VectorQuantize(dim=DIM, codebook_size=K, channel_last=channel_last,
                                         accept_image_fmap=fmap))
    shape = (2, DIM, 6, 5) if fmap else ((2, 30, DIM) if channel_last else (2, DIM, 30))
    xs = _inputs(torch.float32, shape)
    ref, ref_grads, ref_state, _ = _run(peer, xs, True, patched=False)
    got, got_grads, got_state, _ = _run(ours, xs, True, patched=True)
    for (_, q_ref, i_ref, _), (_, q, i, _) in zip(ref, got):
        assert torch.equal(i, i_ref) and q.shape == q_ref.shape
        assert_close(q, q_ref, torch.float32, "quantized")
    assert_close(got_grads[-1], ref_grads[-1], torch.float32, "grad to x")
    assert_close(got_state["embed"], ref_state["embed"], torch.float32, "embed")


@pytest.mark.parametrize("cls, kwargs", [
    (vqp.ResidualVQ, dict(num_quantizers=8)),
    (vqp.ResidualVQ, dict(num_quantizers=4, shared_codebook=True)),
    (vqp.ResidualVQ, dict(num_quantizers=4, quantize_dropout=True)),
    (vqp.GroupedResidualVQ, dict(num_quantizers=4, groups=2)),
], ids=["rvq8", "rvq_shared", "rvq_dropout", "grouped"])
def test_residual_parity_after_training_steps(cls, kwargs):
    torch.manual_seed(0)
    peer, ours = twin(cls(dim=DIM, codebook_size=K, **kwargs))
    for m, patched in ((peer, False), (ours, True)):
        m.train()
        for step, x in enumerate(_inputs(torch.float32)):
            torch.manual_seed(step)
            with (vi.apply_to_vector_quantize_pytorch() if patched else torch.enable_grad()):
                q, idx, loss = m(leaf(x))
            (q.square().sum() + loss.sum()).backward()
        m.last = (q.detach(), idx, loss.detach())
    assert torch.equal(ours.last[1], peer.last[1])
    assert_close(ours.last[0], peer.last[0], torch.float32, "quantized")
    for (n, b_ref), (_, b) in zip(peer.named_buffers(), ours.named_buffers()):
        assert_close(b, b_ref, torch.float32, n)


SERVED_CALLS = {  # forward kwargs served by the fused path; buffers compared after one step
    "freeze_codebook": dict(freeze_codebook=True),
    "ema_weight_tensor": dict(ema_update_weight=torch.full((1, K), 0.5)),
    "ema_weight_callable": dict(ema_update_weight=lambda sums, counts: (counts > 0).float()),
    "accum_ema_update": dict(accum_ema_update=True),
    "no_ema_update": dict(ema_update=False),
}


@pytest.mark.parametrize("cfg", list(SERVED_CALLS))
def test_served_forward_options(cfg):
    torch.manual_seed(0)
    peer, ours = twin(vqp.VectorQuantize(dim=DIM, codebook_size=K).train())
    x = _inputs(torch.float32)[0]
    vi.reset_stats()
    q_ref, i_ref, _ = peer(x, **SERVED_CALLS[cfg])
    with vi.apply_to_vector_quantize_pytorch():
        q, i, _ = ours(x, **SERVED_CALLS[cfg])
    assert vi.stats()[CODEBOOK] == {"served": 1, "passed_through": 0}
    assert torch.equal(i, i_ref)
    assert_close(q, q_ref, torch.float32, "quantized")
    for (n, b_ref), (_, b) in zip(peer._codebook.named_buffers(), ours._codebook.named_buffers()):
        assert_close(b, b_ref, torch.float32, n)
        if b_ref.grad is not None or b.grad is not None:  # accum_ema_update: statistics held in .grad
            assert_close(b.grad, b_ref.grad, torch.float32, f"{n}.grad")


PASS_THROUGH = {  # option -> (constructor kwargs, forward kwargs): the peer's own code runs
    "stochastic_sampling": (dict(stochastic_sample_codes=True, sample_codebook_temp=0.5), {}),
    "gumbel_straight_through": (dict(straight_through=True, rotation_trick=False), {}),
    "cross_entropy_commitment": (dict(commitment_use_cross_entropy_loss=True), {}),
    "diversity_loss": (dict(codebook_diversity_loss_weight=0.1), {}),
    "affine": (dict(affine_param=True), {}),
    "mask": ({}, dict(mask=torch.arange(50) < 40)),
    "lens": ({}, dict(lens=torch.tensor([50, 30, 20, 10]))),
}


@pytest.mark.parametrize("cfg", list(PASS_THROUGH))
def test_unservable_options_pass_through(cfg):
    init, call = PASS_THROUGH[cfg]
    if "mask" in call:
        call = dict(mask=call["mask"].expand(4, 50))
    torch.manual_seed(0)
    peer, ours = twin(vqp.VectorQuantize(dim=DIM, codebook_size=K, **init).train())
    x = _inputs(torch.float32)[0]
    vi.reset_stats()
    torch.manual_seed(1)
    q_ref, i_ref, l_ref = peer(leaf(x), **call)
    with vi.apply_to_vector_quantize_pytorch():
        torch.manual_seed(1)
        q, i, loss = ours(leaf(x), **call)
    assert vi.stats()[CODEBOOK] == {"served": 0, "passed_through": 1}
    assert torch.equal(i, i_ref)
    assert_close(q, q_ref, torch.float32, "quantized")
    assert_close(loss, l_ref, torch.float32, "loss")


def test_topk_and_given_indices_pass_through():
    torch.manual_seed(0)
    vq = vqp.VectorQuantize(dim=DIM, codebook_size=K).eval()
    x = _inputs(torch.float32)[0]
    ref_topk, ref_ce = vq(x, topk=3), vq(x, indices=torch.zeros(4, 50, dtype=torch.long))
    vi.reset_stats()
    with vi.apply_to_vector_quantize_pytorch():
        got_topk, got_ce = vq(x, topk=3), vq(x, indices=torch.zeros(4, 50, dtype=torch.long))
    assert vi.stats()[CODEBOOK] == {"served": 0, "passed_through": 2}
    assert torch.equal(got_topk[1], ref_topk[1])
    torch.testing.assert_close(got_ce[1], ref_ce[1])


@pytest.mark.parametrize("cosine", [False, True], ids=["l2", "cosine"])
def test_kmeans_parity(cosine):
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(2, 500, 8, generator=g)
    if cosine:
        samples = torch.nn.functional.normalize(samples, dim=-1)
    torch.manual_seed(3)
    means_ref, bins_ref = vqp_module.kmeans(samples, 16, 6, use_cosine_sim=cosine)
    with vi.apply_to_vector_quantize_pytorch():
        torch.manual_seed(3)
        means, bins = vqp_module.kmeans(samples, 16, 6, use_cosine_sim=cosine)
    assert torch.equal(bins, bins_ref) and bins.dtype == bins_ref.dtype
    torch.testing.assert_close(means, means_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rotation_trick_value_and_gradient(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q = x + 0.3 * torch.randn(200, 16, generator=g)
    x[0] = 1e-8  # a row below the peer's norm clamp
    q[1] = -x[1]  # antiparallel: u + v = 0, the clamp of |u + v|
    up = torch.randn(200, 16, generator=g)
    x64 = leaf(x.double())
    ref = vqp_module.rotate_to(x64, q.double())  # the peer's formula in fp64: the oracle
    ref.backward(up.double())
    xl = leaf(x.to(dtype))
    with vi.apply_to_vector_quantize_pytorch(codebook=False):
        out = vqp_module.rotate_to(xl, q.to(dtype))
    out.backward(up.to(dtype))
    assert out.dtype == dtype
    assert_close(out, ref, dtype, "rotated")
    assert_close(xl.grad, x64.grad, dtype, "grad to x")


def test_revert_restores_the_peer():
    originals = (vqp_module.Codebook.forward, vqp_module.VectorQuantize.forward, vqp_module.kmeans,
                 vqp_module.rotate_to)
    handle = vi.apply_to_vector_quantize_pytorch()
    assert vqp_module.Codebook.forward is not originals[0]
    handle.revert()
    assert (vqp_module.Codebook.forward, vqp_module.VectorQuantize.forward, vqp_module.kmeans,
            vqp_module.rotate_to) == originals


def test_readme_usage_under_patch():
    """The peer's README examples (VectorQuantize, ResidualVQ with indices round trip) run patched."""
    with vi.apply_to_vector_quantize_pytorch():
        vq = vqp.VectorQuantize(dim=256, codebook_size=512, decay=0.8, commitment_weight=1.)
        quantized, indices, commit_loss = vq(torch.randn(1, 1024, 256))
        assert quantized.shape == (1, 1024, 256) and indices.shape == (1, 1024) and commit_loss.numel() == 1
        rvq = vqp.ResidualVQ(dim=256, num_quantizers=8, codebook_size=256).eval()
        x = torch.randn(1, 256, 256)
        quantized, indices, commit_loss = rvq(x)
        assert indices.shape == (1, 256, 8)
        torch.testing.assert_close(rvq.get_output_from_indices(indices), quantized, rtol=1e-5, atol=1e-5)
