"""The exact top-p rule at its boundary: rows whose nucleus ends at a chosen sorted slot i,
with top_p the largest float64 at which float64(B_i) >= top_p * float64(Z) (slot i out) and
the float64 one above it (slot i in). B_i and Z are recomputed here in Python integers from
the shared float32 exp_f32, so the nucleus is known without any backend; every backend must
keep exactly it and draw the same tokens."""
import math

import pytest
import torch

import vqfast
from vqfast.ops.sampling import HAS
from vqfast.reference import sampling as ref
from vqfast.reference.random import exp_f32
from tests.conftest import backend_params

ALL = backend_params("reference", *HAS)
V = 48


def _row(seed: int, step: float) -> torch.Tensor:
    """[V] float32 logits; step > 0 rounds them to multiples of step (runs of ties)."""
    x = torch.randn(V, generator=torch.Generator().manual_seed(seed))
    return (torch.round(x / step) * step if step else x).float()


def _sorted_masses(x: torch.Tensor, top_k: int | None) -> tuple[list[int], list[int]]:
    """(ids in (value desc, id asc) order, their masses trunc(exp_f32(x - m) * 2^40)) over the kept ids."""
    ids = sorted(range(V), key=lambda v: (-float(x[v]), v))[:top_k or V]
    e = exp_f32(x[ids] - x.max()) * torch.tensor(2.0 ** 40, dtype=torch.float32)
    return ids, [int(q) for q in e.to(torch.int64)]


def _p_at(before: int, z: int) -> float:
    """The largest float64 p with p * float64(z) <= float64(before) (one IEEE multiply)."""
    p = before / z
    while p * float(z) > float(before):
        p = math.nextafter(p, 0.0)
    while math.nextafter(p, 1.0) * float(z) <= float(before):
        p = math.nextafter(p, 1.0)
    return p


CASES = [pytest.param(0, 0.0, None, id="distinct"), pytest.param(1, 0.25, None, id="ties"),
         pytest.param(2, 0.5, 20, id="ties-topk20"), pytest.param(3, 0.0, 30, id="distinct-topk30")]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("seed, step, top_k", CASES)
def test_top_p_boundary_one_ulp_apart(backend, seed, step, top_k):
    x = _row(seed, step)
    ids, q = _sorted_masses(x, top_k)
    z = sum(q)
    i = next(s for s in range(len(q)) if 2 * sum(q[:s + 1]) >= z)  # the slot where half the mass is reached
    assert i > 0 and q[i] > 0
    assert (x[ids[i]] == x[ids[i - 1]]) == (step > 0)  # with ties, the boundary falls inside a run
    p_out = _p_at(sum(q[:i]), z)
    p_in = math.nextafter(p_out, 1.0)
    assert float(sum(q[:i])) >= p_out * float(z) and float(sum(q[:i])) < p_in * float(z)
    rows = 24 if backend == "triton" else 600  # one interpreter program per row
    xs = x.expand(rows, V).contiguous()
    for p, nucleus in ((p_out, ids[:i]), (p_in, ids[:i + 1])):
        tok = vqfast.ops.sample_logits(xs, top_k=top_k, top_p=p, seed=seed, backend=backend)
        assert set(tok.tolist()) <= set(nucleus), p
        want = vqfast.ops.sample_logits(xs[:24], top_k=top_k, top_p=p, seed=seed, backend="reference")
        assert torch.equal(tok[:24], want), p
        if backend != "triton":  # 600 draws: the boundary id, of mass >= 1/40 here, is drawn when kept
            assert (ids[i] in tok.tolist()) == (p == p_in), p


def test_top_p_vocabulary_past_the_int64_bound_raises():
    """Z sums V integer masses of up to 2^40 in int64: V <= 2^23 - 1 with top-p, as for the confidences."""
    V_big = ref.MAX_VOCAB + 1
    x = torch.zeros(1).expand(1, V_big)  # no memory behind it: the check comes first
    with pytest.raises(ValueError, match=f"logits has V={V_big}"):
        vqfast.ops.sample_logits(x, top_p=0.9)
