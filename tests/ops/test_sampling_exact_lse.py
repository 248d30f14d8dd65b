"""The confidence ops' log-softmax rule (vqfast/reference/sampling.py `log_normalizer`): the
confidences of gumbel_topk_select and the positions' order of select_and_sample_topk are the same
bits on every backend (torch.equal, not a tolerance), so the selections are identical, also on
rows tied or nearly tied at the reveal cut-off."""
import pytest
import torch

import vqfast
from vqfast.ops.sampling import HAS
from vqfast.random import log_f32
from vqfast.reference import random as R
from vqfast.reference import sampling as ref
from tests.conftest import backend_params

FAST = backend_params(*HAS)
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]
VOCABS = [pytest.param(1, id="V1"), pytest.param(255, id="V255"), pytest.param(256, id="V256"),
          pytest.param(257, id="V257"), pytest.param(4097, id="V4097")]


def _hard_rows(L: int, V: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """[2, L, V] in dtype: random rows, rows tied at their max, rows one float32 ulp apart at one
    id (nearly tied log-normalisers), permutations of one row (the same multiset: exactly tied),
    -inf runs (masked vocabulary) and a row with one finite value."""
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(2, L, V, generator=g)
    base = 3 * torch.randn(V, generator=g)
    for j in range(L):
        kind = j % 5
        if kind == 1:  # a permutation of `base`
            x[0, j] = base[torch.randperm(V, generator=g)]
        elif kind == 2:  # several ids at the max
            x[0, j, torch.randperm(V, generator=g)[:max(1, V // 3)]] = float(x[0, j].max())
        elif kind == 3 and V > 1:  # base with one id one ulp up
            x[0, j] = base
            x[0, j, j % V] = torch.nextafter(base[j % V], torch.tensor(float("inf")))
        elif kind == 4 and V > 1:  # -inf runs, at least one finite id left
            a = int(torch.randint(0, V, (1,), generator=g))
            x[1, j, a:a + V // 2] = float("-inf")
            x[1, j, (a + V // 2) % V] = 1.0
    x[1, 0] = float("-inf")
    x[1, 0, V // 2] = 0.5
    return x.to(dtype)


def _interpreter_rows(backend: str, L: int) -> int:
    return min(L, 5) if backend == "triton" else L  # one interpreter program per row


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("choice", ["argmax", "sample"])
def test_gumbel_topk_select_confidences_bitwise(backend, dtype, V, choice):
    L = _interpreter_rows(backend, 11)
    x = _hard_rows(L, V, dtype, V)
    big = torch.zeros(2, L, 2 * V, dtype=dtype)
    big[..., 1::2] = x
    masked = torch.ones(2, L, dtype=torch.bool)
    masked[1, ::3] = False
    n = torch.tensor([L // 2, 1])
    for tau in (0.0, 4.5):
        for logits in (x, big[..., 1::2]):  # contiguous and a stride-2 view
            got = vqfast.ops.gumbel_topk_select(logits, masked, n, tau, choice, [V - 1] if V > 2 else None,
                                                seed=V, backend=backend)
            want = vqfast.ops.gumbel_topk_select(logits, masked, n, tau, choice, [V - 1] if V > 2 else None,
                                                 seed=V, backend="reference")
            assert torch.equal(got.confidence, want.confidence), (tau, (got.confidence - want.confidence).abs().max())
            assert torch.equal(got.tokens, want.tokens) and torch.equal(got.reveal, want.reveal)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", VOCABS)
def test_select_and_sample_topk_order_bitwise(backend, dtype, V):
    """n_positions = L: the whole (score desc, position asc) order, so every score's bits count."""
    L = _interpreter_rows(backend, 11)
    x = _hard_rows(L, V, dtype, V + 1)
    known = torch.zeros(2, L, dtype=torch.bool)
    known[1, 1] = True
    for t in (0.7, 1.0, 1.3):
        got = vqfast.ops.select_and_sample_topk(x, known, 3, L, t, seed=V, backend=backend)
        want = vqfast.ops.select_and_sample_topk(x, known, 3, L, t, seed=V, backend="reference")
        assert all(torch.equal(a, b) for a, b in zip(got, want)), t


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("V", [pytest.param(257, id="V257"), pytest.param(4097, id="V4097")])
def test_permuted_rows_tie_exactly(backend, V):
    """Rows holding the same values in other orders have the same log-normaliser (an integer sum
    is exact in any order): at tau = 0 their confidences are equal bits and the reveal takes the
    lowest positions; PUT's order is by position."""
    L = 4 if backend == "triton" else 12
    g = torch.Generator().manual_seed(V)
    base = 3 * torch.randn(V, generator=g)
    x = torch.stack([base[torch.randperm(V, generator=g)] for _ in range(L)])[None]
    sel = vqfast.ops.gumbel_topk_select(x, torch.ones(1, L, dtype=torch.bool), L // 2, 0.0, seed=0, backend=backend)
    assert (sel.confidence == sel.confidence[0, 0]).all()
    assert sel.reveal[0].nonzero().flatten().tolist() == list(range(L // 2))
    pos, _ = vqfast.ops.select_and_sample_topk(x, torch.zeros(1, L, dtype=torch.bool), 5, L, seed=1, backend=backend)
    assert pos[0].tolist() == list(range(L))


@pytest.mark.parametrize("V", [1, 2, 300, 4097])
def test_log_normalizer_is_close_to_float64_logsumexp(V):
    g = torch.Generator().manual_seed(V)
    x = torch.cat([3 * torch.randn(6, V, generator=g), 300 * torch.randn(2, V, generator=g),
                   1e-3 * torch.randn(2, V, generator=g), torch.zeros(1, V)])
    m, norm = ref.log_normalizer(x)
    want = torch.logsumexp(x.double(), -1) - m.double()
    torch.testing.assert_close(norm.double(), want, atol=1e-6, rtol=1e-6)
    assert torch.equal(m, x.amax(-1)) and bool((norm >= 0).all())


def test_int64_to_float32_rounds_to_nearest_even():
    """float32(S) in the rule is one rounding to nearest even; via float64 it would round twice
    (2^60 + 2^36 + 1 -> 2^60 + 2^36 -> 2^60 instead of 2^60 + 2^37)."""
    def rne24(n: int) -> int:
        shift = max(0, n.bit_length() - 24)
        q, r = divmod(n, 1 << shift)
        half = (1 << shift) >> 1
        return (q + (r > half or (r == half and shift > 0 and q & 1))) << shift

    vals = [2 ** 60 + 2 ** 36 + 1, 2 ** 60 + 2 ** 36, 2 ** 40 + 2 ** 16 + 1, 2 ** 62 + 3 * 2 ** 38, 2 ** 40 + 12345,
            2 ** 63 - 1, (1 << 40) * 4097 - 1]
    got = torch.tensor(vals).to(torch.float32).double().tolist()
    assert [int(v) for v in got] == [rne24(v) for v in vals]


def test_terms_vanish_28_below_the_max():
    """Every float32 d in [-87.5, -28] (below -87 exp_f32 gives 0) has trunc(exp_f32(d) 2^40) = 0:
    the CPU kernel skips 256-blocks whose max is that far below the row's (lse::kZeroBelow)."""
    lo = torch.tensor(-28.0).view(torch.int32).item()
    hi = torch.tensor(-87.5).view(torch.int32).item()
    for start in range(lo, hi + 1, 1 << 22):
        d = torch.arange(start, min(start + (1 << 22), hi + 1), dtype=torch.int32).view(torch.float32)
        assert int((R.exp_f32(d) * 2.0 ** 40).to(torch.int64).max()) == 0


def test_the_max_term_is_exactly_2_pow_40():
    """exp_f32(0) = 1 (S >= 2^40, L >= 0) and exp_f32(d) <= 1 for d <= 0 (S <= V 2^40 < 2^63)."""
    d = -torch.rand(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.4
    d = torch.cat([torch.zeros(1), d, -torch.logspace(-30, 0, 1000)])
    q = (R.exp_f32(d) * 2.0 ** 40).to(torch.int64)
    assert int(q[0]) == 1 << 40 and int(q.max()) == 1 << 40
    assert float(log_f32(torch.tensor(1.0))) == 0.0


@pytest.mark.parametrize("op", ["gumbel_topk_select", "select_and_sample_topk"])
def test_vocabulary_past_the_int64_bound_raises(op):
    V = ref.MAX_VOCAB + 1
    x = torch.zeros(1).expand(1, 2, V)  # no memory behind it: the check comes first
    with pytest.raises(ValueError, match=f"logits has V={V}"):
        if op == "gumbel_topk_select":
            vqfast.ops.gumbel_topk_select(x, torch.ones(1, 2, dtype=torch.bool), 1, 1.0)
        else:
            vqfast.ops.select_and_sample_topk(x, torch.zeros(1, 2, dtype=torch.bool), 3)
