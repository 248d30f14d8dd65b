"""The torch.library contracts of every vqfast custom op: torch.library.opcheck (schema,
fake/meta impl, autograd registration, AOT dispatch) on the cpu and reference backends, and
every public op under torch.compile(fullgraph=True, backend="aot_eager") equal to eager."""
import importlib

import pytest
import torch

import vqfast
from vqfast import ops
from vqfast.diffusion import CosineSchedule
from tests.conftest import backend_params

# the op modules (vqfast.ops re-binds some of their names to the public functions)
diffusion, dual_codebook, ema, nearest_code, quantize_statistics, residual, sampling = (
    importlib.import_module(f"vqfast.ops.{m}") for m in
    ("diffusion", "dual_codebook", "ema", "nearest_code", "quantize_statistics", "residual", "sampling"))

BACKENDS = backend_params("reference", "cpu")
SCHED = CosineSchedule(20)
KEY = 1234


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _cases(backend):
    """(custom op, args) for every vqfast custom op, small inputs, grads where it has a backward."""
    g = _gen()
    x = torch.randn(13, 8, generator=g)
    cb = torch.randn(6, 8, generator=g).requires_grad_()
    visible = torch.rand(13, generator=g) < 0.5
    idx = torch.randint(0, 6, (13,), generator=g)
    logits = torch.randn(2, 5, 40, generator=g)
    mask = torch.rand(2, 5, generator=g) < 0.7
    B, L, K = 2, 3, 11
    lx = torch.randn(B * L, K, generator=g).requires_grad_()
    zt = torch.randint(0, K, (B * L,), generator=g)
    x0 = torch.randint(0, K, (B * L,), generator=g)
    t = torch.tensor([1, 7])
    ab, a = SCHED.alpha_bar, SCHED.alpha
    cases = [
        (nearest_code._nearest_code_op, (x, cb.detach(), "l2", backend)),
        (nearest_code._quantize_op, (x, cb, "cosine", backend)),
        (dual_codebook._dual_op, (x, visible, cb, torch.randn(4, 8, generator=g).requires_grad_(), "l2", backend)),
        (residual._residual_op, (x, torch.randn(3, 6, 8, generator=g), 3, "l2", backend)),
        (quantize_statistics._nearest_code_statistics_op, (x, cb.detach(), "l2", backend)),
        (quantize_statistics._quantize_statistics_op, (x, cb, "l2", backend)),
        (ema._ema_statistics_op, (x, idx, 6, backend)),
        (ema._ema_update_op, (torch.rand(6), torch.randn(6, 8), torch.rand(6), torch.randn(6, 8), 0.9, 1e-5, backend)),
        (sampling._gumbel_topk_select_op, (logits, mask, mask.sum(1) // 2, 2.0, True, torch.tensor([3]), KEY, backend)),
        (sampling._select_and_sample_topk_op, (logits, ~mask, 5, 2, 0.8, KEY, backend)),
        (sampling._sample_logits_op, (logits.reshape(-1, 40), None, 1.0, 0.9, 7, 0.8, KEY, backend)),
        (sampling._sample_logits_op, (logits.reshape(-1, 40), torch.randn(10, 40, generator=g), 2.5, 1.0, 0, 1.0,
                                      KEY, backend)),
        (diffusion._logprobs_op, (lx, zt, t, ab, a, "uniform", backend)),
        (diffusion._sample_op, (lx.detach(), torch.full_like(zt, K), t, ab, a, "absorbing", KEY, backend)),
        (diffusion._vlb_op, (x0, lx, zt, t, ab, a, "uniform", backend)),
    ]
    if backend != "reference":  # the reference's backward is autograd through the oracle, not an op
        stats = diffusion._vlb_op(x0, lx.detach(), zt, t, ab, a, "uniform", backend)[1]
        cases.append((diffusion._logprobs_backward_op, (torch.rand(B * L, K), lx.detach(), zt, t, ab, a,
                                                        torch.logsumexp(lx.detach(), -1), "uniform", backend)))
        cases.append((diffusion._vlb_backward_op, (torch.rand(B * L), x0, lx.detach(), zt, t, ab, a, stats,
                                                   "uniform", backend)))
    return cases


def test_every_custom_op_is_covered():
    assert {op._name for op, _ in _cases("cpu")} == set(torch.ops.vqfast)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    for op, args in _cases(backend):
        torch.library.opcheck(op, args)


# ---------------------------------------------------------------- torch.compile(fullgraph=True)

def _public_calls():
    g = _gen(1)
    x = torch.randn(3, 7, 8, generator=g)
    cb = torch.randn(12, 8, generator=g)
    visible = torch.rand(3, 7, generator=g) < 0.5
    logits = torch.randn(2, 6, 50, generator=g)
    masked = torch.rand(2, 6, generator=g) < 0.7
    lx = torch.randn(2, 4, 9, generator=g)
    zt = torch.randint(0, 9, (2, 4), generator=g)
    x0 = torch.randint(0, 9, (2, 4), generator=g)
    t = torch.tensor([3, 20])
    st = (torch.rand(12), torch.randn(12, 8), torch.rand(12), torch.randn(12, 8))
    return {
        "nearest_code": (lambda: ops.nearest_code(x, cb)),
        "quantize": (lambda: tuple(ops.quantize(x, cb, metric="cosine"))),
        "dual_codebook_quantize": (lambda: tuple(ops.dual_codebook_quantize(x, visible, cb, cb[:5]))),
        "residual_quantize": (lambda: tuple(ops.residual_quantize(x, cb, 3))),
        "nearest_code_with_statistics": (lambda: tuple(ops.nearest_code_with_statistics(x, cb))),
        "quantize_with_statistics": (lambda: (*ops.quantize_with_statistics(x, cb).quantized,
                                              *ops.quantize_with_statistics(x, cb)[1:])),
        "ema_statistics": (lambda: ops.ema_statistics(x.reshape(-1, 8), torch.arange(21) % 12, 12)),
        "ema_update_": (lambda: ops.ema_update_(st[0].clone(), st[1].clone(), st[2], st[3], 0.9)),
        "gumbel_topk_select": (lambda: tuple(ops.gumbel_topk_select(logits, masked, 1, 2.0, "sample", [3], seed=5))),
        "select_and_sample_topk": (lambda: ops.select_and_sample_topk(logits, ~masked, 5, 2, 0.8, seed=5)),
        "sample_logits": (lambda: ops.sample_logits(logits, 0.9, top_k=20, top_p=0.8, seed=5)),
        "posterior_logprobs": (lambda: ops.posterior_logprobs(lx, zt, t, SCHED)),
        "posterior_sample": (lambda: ops.posterior_sample(lx, zt, t, SCHED, seed=5, transition="uniform")),
        "vlb_kl": (lambda: ops.vlb_kl(x0, lx, zt, t, SCHED)),
    }


def test_public_ops_cover_vqfast_ops():
    assert set(_public_calls()) == set(vqfast.ops.__all__) - {n for n in vqfast.ops.__all__ if n[0].isupper()}


@pytest.mark.parametrize("name", sorted(_public_calls()))
def test_compile_fullgraph_equals_eager(name):
    fn = _public_calls()[name]
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    got, want = compiled(), fn()
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            assert torch.equal(a, b), name


def test_public_ops_run_on_meta_tensors():
    """Every public op takes meta tensors (shapes only, no value checks) and returns meta outputs of the
    eager shapes (the samplers and diffusion ops called .item() on their NaN flags)."""
    m = torch.device("meta")
    x, cb = torch.empty(6, 8, device=m), torch.empty(5, 8, device=m)
    logits, z = torch.empty(2, 3, 7, device=m), torch.zeros(2, 3, dtype=torch.long, device=m)
    masked, t = torch.ones(2, 3, dtype=torch.bool, device=m), torch.tensor([1, 2], device=m)
    outs = {
        "nearest_code": ops.nearest_code(x, cb),
        "quantize": ops.quantize(x, cb),
        "residual_quantize": ops.residual_quantize(x, cb, 2),
        "dual_codebook_quantize": ops.dual_codebook_quantize(x, masked.reshape(-1), cb, cb),
        "nearest_code_with_statistics": ops.nearest_code_with_statistics(x, cb),
        "ema_statistics": ops.ema_statistics(x, z.reshape(-1), 5),
        "ema_update_": (ops.ema_update_(torch.ones(5, device=m), torch.zeros(5, 8, device=m), torch.ones(5, device=m),
                                        torch.zeros(5, 8, device=m)),),
        "gumbel_topk_select": ops.gumbel_topk_select(logits, masked, 1, 1.0, seed=1),
        "select_and_sample_topk": ops.select_and_sample_topk(logits, ~masked, 2, 2, seed=1),
        "sample_logits": (ops.sample_logits(logits, top_k=3, seed=1),),
        "posterior_logprobs": (ops.posterior_logprobs(logits, z, t, SCHED),),
        "posterior_sample": (ops.posterior_sample(logits, z, t, SCHED, seed=1),),
        "vlb_kl": (ops.vlb_kl(z, logits, z, t, SCHED),),
    }
    assert outs["sample_logits"][0].shape == (2, 3) and outs["posterior_logprobs"][0].shape == (2, 3, 7)
    assert outs["select_and_sample_topk"][0].shape == (2, 2) and outs["vlb_kl"][0].shape == (2, 3)
    for name, out in outs.items():
        assert all(o.device.type == "meta" for o in out if isinstance(o, torch.Tensor)), name
