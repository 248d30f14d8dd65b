"""Token samplers (gumbel_topk_select, select_and_sample_topk, sample_logits): every backend
against the reference oracle (tokens exactly: all backends draw the same noise), edge
rows, tie rules, reproducibility, and chi-square tests of the sampled distributions."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import chi2

import vqfast
from vqfast.ops.sampling import HAS
from vqfast.reference import sampling as ref
from tests.conftest import backend_params

FAST = backend_params(*HAS)
ALL = backend_params("reference", *HAS)
# Distribution tests draw ~10^4 rows: one Triton program each is too slow for the interpreter;
# the Triton kernels draw the reference's tokens exactly (tests above), hence its distribution.
STAT = backend_params("reference", *(b for b in HAS if b != "triton"))
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]
VOCABS = [pytest.param(2, id="V2"), pytest.param(1000, id="V1000"), pytest.param(1025, id="V1025"),
          pytest.param(16384, id="V16384")]
P_FAIL = 1e-6  # each statistical test fails with at most this probability


def _logits(B, L, V, dtype, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, L, V, generator=g) * scale).to(dtype), g


def _interpreter_budget(backend, dtype, V, kw=None):
    """The Triton interpreter runs ~1 ms per block op and one program per row: its oracle
    tests cover fp32 and bf16 (fp16 loads the same way) at V in {2, 1025}, and fp32 without
    top-p (32 extra bisection passes) at V = 16384."""
    if backend != "triton":
        return
    if dtype == torch.float16 or V == 1000 or (V >= 16384 and (dtype != torch.float32 or "top_p" in (kw or {}))):
        pytest.skip("Triton interpreter time budget (see _interpreter_budget)")


def _rows_for(V, backend):
    if backend == "triton":  # the interpreter runs one program per row at ~ms per block op
        return (2, 2) if V >= 16384 else (2, 4)
    return (2, 9) if V >= 16384 else (3, 21)


# ---------------------------------------------------------------- gumbel_topk_select

@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("choice", ["argmax", "sample"])
def test_gumbel_topk_select_matches_reference(backend, dtype, V, choice):
    _interpreter_budget(backend, dtype, V)
    B, L = _rows_for(V, backend)
    logits, g = _logits(B, L, V, dtype, V)
    masked = torch.rand(B, L, generator=g) < 0.6
    masked[0] = True
    n = masked.sum(1)
    n[0] = L  # every position masked and revealed
    n[1] = 0
    banned = [0, V - 1] if V > 2 else [1]
    out = vqfast.ops.gumbel_topk_select(logits, masked, n, 4.5, choice, banned, seed=V, backend=backend)
    exp = vqfast.ops.gumbel_topk_select(logits, masked, n, 4.5, choice, banned, seed=V, backend="reference")
    assert torch.equal(out.tokens, exp.tokens)
    assert torch.equal(out.reveal, exp.reveal)
    assert torch.equal(out.confidence, exp.confidence)  # one log-softmax rule: the same bits
    assert not torch.isin(out.tokens, torch.tensor(banned)).any()


@pytest.mark.parametrize("backend", ALL)
def test_gumbel_topk_select_semantics(backend):
    B, L, V = 4, 50, 37
    logits, g = _logits(B, L, V, torch.float32, 1)
    masked = torch.rand(B, L, generator=g) < 0.5
    n = (masked.sum(1) * torch.tensor([0.0, 0.3, 0.7, 1.0])).long()
    tok, conf, rev = vqfast.ops.gumbel_topk_select(logits, masked, n, 1.0, "argmax", [3], seed=2, backend=backend)
    x = logits.clone()
    x[..., 3] = float("-inf")
    assert torch.equal(tok, x.argmax(-1))
    assert torch.equal(rev.sum(1), n) and not (rev & ~masked).any()
    assert torch.isinf(conf[~masked]).all() and (conf[~masked] < 0).all()
    for b in range(B):  # revealed positions are the most confident masked ones
        if 0 < n[b] < masked[b].sum():
            assert conf[b][rev[b]].min() >= conf[b][masked[b] & ~rev[b]].max()


@pytest.mark.parametrize("backend", ALL)
def test_gumbel_topk_select_ties_go_to_lower_position(backend):
    logits = torch.zeros(2, 12, 5)
    logits[..., 2] = 1.0  # every position equally confident at temperature 0
    masked = torch.ones(2, 12, dtype=torch.bool)
    masked[1, :3] = False
    _, conf, rev = vqfast.ops.gumbel_topk_select(logits, masked, torch.tensor([4, 5]), 0.0, seed=0, backend=backend)
    assert rev[0].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert rev[1].nonzero().flatten().tolist() == [3, 4, 5, 6, 7]


# ---------------------------------------------------------------- select_and_sample_topk

@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", VOCABS)
def test_select_and_sample_topk_matches_reference(backend, dtype, V):
    _interpreter_budget(backend, dtype, V)
    B, L = _rows_for(V, backend)
    logits, g = _logits(B, L, V, dtype, V + 1)
    known = torch.rand(B, L, generator=g) < 0.5
    known[0] = True  # all positions known
    known[1, :-2] = True  # fewer unknown positions than n_positions
    known[1, -2:] = False
    for top_k, n, t in [(1, 1, 1.0), (5, 3, 0.7), (V + 10, 4, 1.3)]:
        pos, tok = vqfast.ops.select_and_sample_topk(logits, known, top_k, n, t, seed=top_k, backend=backend)
        epos, etok = vqfast.ops.select_and_sample_topk(logits, known, top_k, n, t, seed=top_k, backend="reference")
        assert torch.equal(pos, epos) and torch.equal(tok, etok)
        assert (pos[0] == -1).all() and (tok[0] == -1).all()
        assert (pos[1, 2:] == -1).all() and (pos[1, :min(2, n)] >= L - 2).all()


@pytest.mark.parametrize("backend", ALL)
def test_select_and_sample_topk_semantics(backend):
    B, L, V = 3, 40, 30
    logits, g = _logits(B, L, V, torch.float32, 5)
    known = torch.rand(B, L, generator=g) < 0.3
    pos, tok = vqfast.ops.select_and_sample_topk(logits, known, 1, 5, 0.5, seed=1, backend=backend)
    score = torch.log_softmax(logits / 0.5, -1).amax(-1).masked_fill(known, float("-inf"))
    assert torch.equal(pos, score.topk(5, dim=1).indices)  # distinct scores: order is unambiguous
    assert torch.equal(tok, logits.argmax(-1).gather(1, pos))  # top_k = 1 is greedy


# ---------------------------------------------------------------- sample_logits

SAMPLE_KW = [pytest.param({}, id="plain"), pytest.param({"temperature": 0}, id="greedy"),
             pytest.param({"top_k": 3}, id="topk3"), pytest.param({"top_p": 0.9}, id="topp"),
             pytest.param({"top_k": 50, "top_p": 0.5, "temperature": 0.8}, id="topk-topp"),
             pytest.param({"cfg_scale": 2.5, "top_k": 10}, id="cfg"), pytest.param({"top_p": 1e-3}, id="topp-tiny")]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("kw", SAMPLE_KW)
def test_sample_logits_matches_reference(backend, dtype, V, kw):
    _interpreter_budget(backend, dtype, V, kw)
    B, L = _rows_for(V, backend)
    logits, g = _logits(B, L, V, dtype, V + 2)
    if "cfg_scale" in kw:
        kw = dict(kw, uncond_logits=torch.randn(B, L, V, generator=g).to(dtype))
    tok = vqfast.ops.sample_logits(logits, seed=7, backend=backend, **kw)
    exp = vqfast.ops.sample_logits(logits, seed=7, backend="reference", **kw)
    assert tok.shape == (B, L) and tok.dtype == torch.long
    assert torch.equal(tok, exp)


@pytest.mark.parametrize("backend", ALL)
def test_sample_logits_views_ties_and_filters(backend):
    g = torch.Generator().manual_seed(3)
    small = backend == "triton"  # one interpreter program per row
    big = torch.randn(6, 20, 70, generator=g)
    x = big[::2, 5:7 if small else 13, ::2]  # [3, 2 or 8, 35], not contiguous
    assert torch.equal(vqfast.ops.sample_logits(x, seed=1, backend=backend),
                       vqfast.ops.sample_logits(x.contiguous(), seed=1, backend=backend))
    ties = torch.zeros(4, 9)
    ties[:, [2, 5, 7]] = 1.0
    assert vqfast.ops.sample_logits(ties, 0, backend=backend).tolist() == [2, 2, 2, 2]
    # top_k = 2 with a three-way tie keeps the two lowest ids
    tok = vqfast.ops.sample_logits(ties[0].expand(16 if small else 60, 9), 1.0, top_k=2, seed=4, backend=backend)
    assert set(tok.tolist()) == {2, 5}
    tok = vqfast.ops.sample_logits(x, 1.0, top_k=1, seed=5, backend=backend)
    assert torch.equal(tok, x.argmax(-1))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("V, top_p, kept", [pytest.param(300, 0.1, 30, id="V300-p0.1"),
                                            pytest.param(100, 0.1, 10, id="V100-p0.1"),
                                            pytest.param(300, 0.25, 75, id="V300-p0.25"),
                                            pytest.param(7, 3 / 7, 3, id="V7-p3/7")])
def test_sample_logits_top_p_exact_ties(backend, V, top_p, kept):
    """Equal logits: the nucleus is the `kept` lowest ids whose masses sum to exactly top_p * Z
    (kept = top_p * V in float64), never one more; every backend draws the same tokens."""
    assert top_p * V == kept  # the float64 product the rule compares against
    rows = 8 if backend == "triton" else 3000  # one interpreter program per row
    tok = vqfast.ops.sample_logits(torch.zeros(rows, V), temperature=0.7, top_p=top_p, seed=0, backend=backend)
    assert int(tok.min()) >= 0 and int(tok.max()) < kept
    if backend == "triton":
        want = vqfast.ops.sample_logits(torch.zeros(rows, V), temperature=0.7, top_p=top_p, seed=0, backend="cpu")
        assert torch.equal(tok, want)
    else:  # 3000 draws over `kept` ids: each one appears; cpu and the reference draw the same tokens
        assert torch.bincount(tok, minlength=kept).gt(0).all()
        other = "cpu" if backend == "reference" else "reference"
        assert torch.equal(tok[:50], vqfast.ops.sample_logits(torch.zeros(50, V), temperature=0.7, top_p=top_p,
                                                              seed=0, backend=other))


@pytest.mark.parametrize("backend", FAST)
def test_sample_logits_top_p_ties_below_the_max(backend):
    """Integer logits (runs of ties at every value, the boundary inside a run) with top_p and
    top_k + top_p: the kernels draw the reference's tokens."""
    rows = 6 if backend == "triton" else 48  # one interpreter program per row
    x = torch.randint(-3, 2, (rows, 300), generator=torch.Generator().manual_seed(0)).float()
    for kw in (dict(top_p=0.3), dict(top_p=0.5, top_k=40), dict(top_p=0.9), dict(top_p=0.2, top_k=7)):
        want = vqfast.ops.sample_logits(x, seed=1, backend="reference", **kw)
        assert torch.equal(vqfast.ops.sample_logits(x, seed=1, backend=backend, **kw), want), kw


@pytest.mark.parametrize("backend", ALL)
def test_sample_logits_reproducible_and_fresh(backend):
    x = torch.randn(8 if backend == "triton" else 64, 100)
    a = vqfast.ops.sample_logits(x, generator=torch.Generator().manual_seed(5), backend=backend)
    b = vqfast.ops.sample_logits(x, generator=torch.Generator().manual_seed(5), backend=backend)
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(5)
    vqfast.ops.sample_logits(x, generator=g, backend=backend)
    assert not torch.equal(vqfast.ops.sample_logits(x, generator=g, backend=backend), a)


def _filter_rows(V, g):
    """Rows that defeat the CPU filter's threshold carried over from the previous row (scales
    from 1e-3 to 1e3, shifted maxima), rows with fewer finite values than top_k, rows full of
    ties at any boundary, and a constant row."""
    rows = [torch.randn(V, generator=g) * s for s in (1.0, 1000.0, 1e-3, 30.0, 1.0)]
    rows.append(torch.randn(V, generator=g) + 50.0)
    few = torch.full((V,), float("-inf"))
    few[::max(1, V // 3)] = torch.randn(len(range(0, V, max(1, V // 3))), generator=g)
    rows.append(few)
    rows.append(torch.randint(0, 3, (V,), generator=g).float())
    rows.append(torch.randint(0, 2, (V,), generator=g).float() * 0.5 - 7.0)
    rows.append(torch.zeros(V))
    return torch.stack(rows)


FILTER_KW = [pytest.param({"top_k": 1}, id="k1"), pytest.param({"top_k": 5}, id="k5"),
             pytest.param({"top_k": 50}, id="k50"), pytest.param({"top_k": -1}, id="kV-1"),
             pytest.param({"top_p": 1e-6}, id="p-tiny"), pytest.param({"top_p": 0.5}, id="p0.5"),
             pytest.param({"top_p": 1 - 1e-6}, id="p-near-1"), pytest.param({"top_k": 7, "top_p": 0.3}, id="k7-p0.3"),
             # p * 2000 equal ties off an integer: at an exact boundary float rounding decides (any backend)
             pytest.param({"top_k": 2000, "top_p": 0.9537, "temperature": 0.5}, id="k2000-p0.95")]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("V", [pytest.param(3, id="V3"), pytest.param(1025, id="V1025"),
                               pytest.param(4099, id="V4099")])
@pytest.mark.parametrize("kw", FILTER_KW)
def test_sample_logits_filters_on_hard_rows(backend, V, kw):
    """Top-k / top-p edge rows (see _filter_rows), each also repeated after a row of another
    scale, exactly against the reference; k >= V means no filter."""
    if backend == "triton" and V > 3:
        pytest.skip("Triton interpreter time budget: the CPU filter's row-to-row guess is what is tested")
    g = torch.Generator().manual_seed(V)
    x = _filter_rows(V, g)
    if backend != "triton":  # one interpreter program per row
        x = torch.cat([x, x.flip(0), x[torch.randperm(x.shape[0], generator=g)]])
    kw = dict(kw)
    if kw.get("top_k") == -1:
        kw["top_k"] = max(1, V - 1)
    for seed in (0, 1) if backend != "triton" else (0,):
        tok = vqfast.ops.sample_logits(x, seed=seed, backend=backend, **kw)
        exp = vqfast.ops.sample_logits(x, seed=seed, backend="reference", **kw)
        assert torch.equal(tok, exp), (tok, exp)
        if "top_k" in kw:  # always one of the k largest (ties: lower ids)
            assert bool((ref._topk_keep(x.float(), min(kw["top_k"], V)).gather(1, tok[:, None])).all())


@pytest.mark.parametrize("backend", FAST)
def test_select_and_sample_topk_hard_rows(backend):
    """PUT's top-k draw on rows of very different scales and with ties, exactly against the reference."""
    V = 37 if backend == "triton" else 1025
    x = _filter_rows(V, torch.Generator().manual_seed(3))[None]
    known = torch.zeros(1, x.shape[1], dtype=torch.bool)
    for top_k, n in [(3, x.shape[1]), (V - 1, 4), (V, 2)]:
        pos, tok = vqfast.ops.select_and_sample_topk(x, known, top_k, n, 1.0, seed=top_k, backend=backend)
        epos, etok = vqfast.ops.select_and_sample_topk(x, known, top_k, n, 1.0, seed=top_k, backend="reference")
        assert torch.equal(pos, epos) and torch.equal(tok, etok)



_LARGE_MAGNITUDE_ROWS = """
import torch, vqfast
torch.set_num_threads(1)  # one thread carries the row-to-row guess through every row
x = torch.tensor([[4e8, 3e8, 2e8, 0.0], [1e8, 0.0, -1e8, -2e8], [1e9, 0.0, 0.0, 0.0],
                  [3.4e7, 3.4e7 - 4, 3.4e7 - 8, 0.0]])
for kw in (dict(top_k=2), dict(top_p=0.99), dict(top_k=3, top_p=0.9), dict(top_k=2, temperature=1e-7)):
    xs = x / 1e7 if "temperature" in kw else x  # [40, 30, 20, 0], ... at temperature 1e-7
    a = vqfast.ops.sample_logits(xs, seed=1, backend=BACKEND, **kw)
    assert torch.equal(a, vqfast.ops.sample_logits(xs, seed=1, backend="reference", **kw)), kw
known = torch.zeros(1, 2, dtype=torch.bool)
a = vqfast.ops.select_and_sample_topk(x[None, :2], known, 2, 2, seed=1, backend=BACKEND)
b = vqfast.ops.select_and_sample_topk(x[None, :2], known, 2, 2, seed=1, backend="reference")
assert all(torch.equal(u, v) for u, v in zip(a, b))
"""


@pytest.mark.parametrize("backend", FAST)
def test_filters_terminate_on_large_magnitudes(backend):
    """Logits (after the temperature) past ~3e7, where m - 1.5 rounds back to m, after a row whose
    boundary lies above them: the CPU filter lowered its candidate threshold by nothing and looped
    forever. Run in a subprocess so that a hang fails the test; tokens exactly as the reference."""
    code = f"BACKEND = {backend!r}\n" + _LARGE_MAGNITUDE_ROWS
    root = pathlib.Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

# ---------------------------------------------------------------- distributions

def _chi_square_ok(counts: torch.Tensor, probs: torch.Tensor) -> None:
    """Pearson chi-square of counts against probs (support only), threshold at P_FAIL."""
    n = counts.sum()
    support = probs > 0
    assert counts[~support].sum() == 0, "drew an id of probability 0"
    exp = probs[support] * n
    stat = ((counts[support] - exp) ** 2 / exp).sum()
    df = int(support.sum()) - 1
    if df > 0:
        assert stat < chi2.isf(P_FAIL, df), (float(stat), chi2.isf(P_FAIL, df))


def _target(logits, temperature=1.0, top_k=None, top_p=None):
    """Exact probabilities of the filtered categorical, in float64."""
    x = logits.double() / temperature
    order = torch.sort(x, descending=True, stable=True).indices
    keep = torch.zeros_like(x, dtype=torch.bool)
    k = len(x) if top_k is None else top_k
    keep[order[:k]] = True
    p = torch.softmax(x.masked_fill(~keep, float("-inf")), -1)
    if top_p is not None:
        ps = p[order]
        before = torch.cumsum(ps, 0) - ps
        keep2 = torch.zeros_like(keep)
        keep2[order[before < top_p]] = True
        p = torch.softmax(x.masked_fill(~(keep & keep2), float("-inf")), -1)
    return p


@pytest.mark.parametrize("backend", STAT)
@pytest.mark.parametrize("kw", [pytest.param({}, id="plain"), pytest.param({"temperature": 0.7, "top_k": 6}, id="topk"),
                                pytest.param({"top_p": 0.8}, id="topp")])
def test_sample_logits_distribution(backend, kw):
    V, n = 12, 20000
    logits = torch.linspace(-2.0, 1.5, V)[torch.randperm(V, generator=torch.Generator().manual_seed(0))]
    tok = vqfast.ops.sample_logits(logits.expand(n, V), seed=11, backend=backend, **kw)
    _chi_square_ok(torch.bincount(tok, minlength=V).double(), _target(logits, **kw))


@pytest.mark.parametrize("backend", STAT)
def test_sample_logits_cfg_distribution(backend):
    V, n = 8, 30000
    c, u = torch.randn(V, generator=torch.Generator().manual_seed(1)), torch.randn(V)
    tok = vqfast.ops.sample_logits(c.expand(n, V), cfg_scale=1.5, uncond_logits=u.expand(n, V), seed=3, backend=backend)
    _chi_square_ok(torch.bincount(tok, minlength=V).double(), torch.softmax((u + 1.5 * (c - u)).double(), -1))


@pytest.mark.parametrize("backend", STAT)
def test_gumbel_topk_select_sample_distribution(backend):
    V, L = 10, 30000
    logits = torch.randn(V, generator=torch.Generator().manual_seed(2)).expand(1, L, V)
    masked = torch.ones(1, L, dtype=torch.bool)
    tok, _, _ = vqfast.ops.gumbel_topk_select(logits, masked, 0, 1.0, "sample", [4], seed=8, backend=backend)
    target = torch.softmax(logits[0, 0].double().index_fill(0, torch.tensor([4]), float("-inf")), -1)
    _chi_square_ok(torch.bincount(tok.flatten(), minlength=V).double(), target)


@pytest.mark.parametrize("backend", STAT)
def test_select_and_sample_topk_distribution(backend):
    V, B = 15, 20000
    logits = torch.randn(V, generator=torch.Generator().manual_seed(4)).expand(B, 1, V)
    pos, tok = vqfast.ops.select_and_sample_topk(logits, torch.zeros(B, 1, dtype=torch.bool), 5, 1, 0.8,
                                                 seed=9, backend=backend)
    assert (pos == 0).all()
    _chi_square_ok(torch.bincount(tok.flatten(), minlength=V).double(), _target(logits[0, 0], 0.8, top_k=5))


# ---------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 5, 7)
    m = torch.ones(2, 5, dtype=torch.bool)
    sel = vqfast.ops.gumbel_topk_select
    with pytest.raises(ValueError, match="n_reveal"):
        sel(x, m, torch.tensor([6, 1]), 1.0)
    with pytest.raises(ValueError, match="n_reveal"):
        sel(x, m, -1, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        sel(x, m, 1, -0.5)
    with pytest.raises(ValueError, match="choice"):
        sel(x, m, 1, 1.0, "greedy")
    with pytest.raises(ValueError, match="masked"):
        sel(x, m[:, :4], 1, 1.0)
    with pytest.raises(TypeError, match="masked"):
        sel(x, m.float(), 1, 1.0)
    with pytest.raises(TypeError, match="logits"):
        sel(x.long(), m, 1, 1.0)
    with pytest.raises(ValueError, match="logits"):
        sel(x[0], m, 1, 1.0)
    with pytest.raises(ValueError, match="banned_ids"):
        sel(x, m, 1, 1.0, banned_ids=[7])
    with pytest.raises(ValueError, match="banned_ids"):
        sel(x, m, 1, 1.0, banned_ids=list(range(7)))
    bad = x.clone()
    bad[1, 2, 3] = float("nan")
    for backend in ("reference", *HAS):
        with pytest.raises(ValueError, match="NaN"):
            sel(bad, m, 1, 1.0, backend=backend)
        with pytest.raises(ValueError, match="NaN"):
            vqfast.ops.sample_logits(bad, backend=backend)
        with pytest.raises(ValueError, match="NaN"):
            vqfast.ops.select_and_sample_topk(bad, ~m, 3, backend=backend)
    vqfast.ops.select_and_sample_topk(bad, m.clone().index_fill_(0, torch.tensor([0]), False), 3)  # NaN only where known
    huge = torch.full((2, 7), 3e38)  # finite, but +inf once divided by the temperature
    for backend in ("reference", *HAS):
        with pytest.raises(ValueError, match="NaN or \\+inf"):
            vqfast.ops.sample_logits(huge, 0.5, top_k=3, backend=backend)
        with pytest.raises(ValueError, match="NaN or \\+inf"):
            vqfast.ops.select_and_sample_topk(huge[None], torch.zeros(1, 2, dtype=torch.bool), 3, temperature=0.5,
                                              backend=backend)
    for k in (0, -2):
        with pytest.raises(ValueError, match="top_k"):
            vqfast.ops.select_and_sample_topk(x, ~m, k)
        with pytest.raises(ValueError, match="top_k"):
            vqfast.ops.sample_logits(x, top_k=k)
    with pytest.raises(ValueError, match="temperature"):
        vqfast.ops.select_and_sample_topk(x, ~m, 3, temperature=0.0)
    with pytest.raises(ValueError, match="n_positions"):
        vqfast.ops.select_and_sample_topk(x, ~m, 3, n_positions=0)
    with pytest.raises(ValueError, match="temperature"):
        vqfast.ops.sample_logits(x, temperature=-1.0)
    for p in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="top_p"):
            vqfast.ops.sample_logits(x, top_p=p)
    with pytest.raises(ValueError, match="cfg_scale"):
        vqfast.ops.sample_logits(x, cfg_scale=2.0)
    with pytest.raises(ValueError, match="uncond_logits"):
        vqfast.ops.sample_logits(x, cfg_scale=2.0, uncond_logits=x[:, :3])
    with pytest.raises(ValueError, match="either generator or seed"):
        vqfast.ops.sample_logits(x, generator=torch.Generator(), seed=1)
    with pytest.raises(TypeError, match="top_k"):
        vqfast.ops.sample_logits(x, top_k=2.5)


@pytest.mark.parametrize("backend", ALL)
def test_gumbel_topk_select_empty_banned_ids_and_scalar_n_reveal(backend):
    """An empty banned_ids bans nothing; n_reveal may be a numpy int or a 0-d tensor (not a bool
    or a float)."""
    x, _ = _logits(2, 5, 7, torch.float32, 0)
    m = torch.ones(2, 5, dtype=torch.bool)
    plain = vqfast.ops.gumbel_topk_select(x, m, 2, 1.0, "sample", seed=3, backend=backend)
    for banned in ([], (), torch.empty(0, dtype=torch.long)):
        out = vqfast.ops.gumbel_topk_select(x, m, 2, 1.0, "sample", banned, seed=3, backend=backend)
        assert all(torch.equal(a, b) for a, b in zip(out, plain))
    for n in (np.int64(2), torch.tensor(2), torch.tensor(2, dtype=torch.int32)):
        out = vqfast.ops.gumbel_topk_select(x, m, n, 1.0, "sample", seed=3, backend=backend)
        assert all(torch.equal(a, b) for a, b in zip(out, plain))
    for n in (torch.tensor(True), torch.tensor(2.0), 2.0):
        with pytest.raises(TypeError, match="n_reveal must be an int"):
            vqfast.ops.gumbel_topk_select(x, m, n, 1.0, backend=backend)



def test_numpy_scalars_are_real_arguments():
    """A numpy float (e.g. read from a config array) is a real number, a numpy bool is not."""
    x, _ = _logits(2, 3, 11, torch.float32, 1)
    plain = vqfast.ops.sample_logits(x, 0.7, top_p=0.9, seed=2)
    assert torch.equal(vqfast.ops.sample_logits(x, np.float32(0.7), top_p=np.float64(0.9), seed=2), plain)
    with pytest.raises(TypeError, match="temperature must be a real number"):
        vqfast.ops.sample_logits(x, np.bool_(True))

@pytest.mark.parametrize("backend", ALL)
def test_select_and_sample_topk_without_positions(backend):
    """L = 0: no position to select, every slot holds -1."""
    x = torch.randn(2, 0, 7)
    pos, tok = vqfast.ops.select_and_sample_topk(x, torch.zeros(2, 0, dtype=torch.bool), 3, 2, seed=1,
                                                 backend=backend)
    assert pos.shape == tok.shape == (2, 2)
    assert (pos == -1).all() and (tok == -1).all()


def test_torch_compile_gives_the_eager_tokens():
    """Eager CPU calls skip the custom-op layer; traced calls go through it: same tokens."""
    x = torch.randn(2, 5, 33, generator=torch.Generator().manual_seed(0))
    m = torch.rand(2, 5, generator=torch.Generator().manual_seed(1)) < 0.6

    def draws(x):
        return (vqfast.ops.sample_logits(x, 0.9, top_k=7, seed=3),
                vqfast.ops.gumbel_topk_select(x, m, 1, 2.0, "sample", seed=4).tokens,
                vqfast.ops.select_and_sample_topk(x, ~m, 5, 2, seed=5)[1])

    eager = draws(x)
    traced = torch.compile(draws, backend="aot_eager")(x)
    for a, b in zip(eager, traced):
        assert torch.equal(a, b)
