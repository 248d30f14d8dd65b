"""vqfast's counter-based noise: Philox known answers, bit-exact across reference / C++ / Triton,
keys from generator or seed, the distributions of the uniform and Gumbel maps, and the
categorical sampler (envelope bound, exact distribution, same draws on every backend)."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from vqfast import random as _random
from vqfast.reference import random as R
from tests.conftest import available

KEYS = [0, 1, (1 << 32) | 1, 12345678901234567, 2 ** 64 - 1, 0xDEADBEEF << 32]  # words equal to 1 arrive as constexprs


def test_philox_known_answers():
    # Random123 kat_vectors, philox4x32_10.
    out = _random.philox4x32(torch.tensor(0), 0, 0, 0, 0)
    assert [int(w) for w in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    m = 0xFFFFFFFF
    out = _random.philox4x32(torch.tensor(m), m, m, m, 2 ** 64 - 1)
    assert [int(w) for w in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


def test_element_index_layout():
    idx = torch.arange(8)
    w = _random.words(99, 3, idx)
    block1 = _random.philox4x32(torch.tensor(1), 0, 3, 0, 99)
    assert w[4:].tolist() == [int(x) for x in block1]


def _noise(backend, key, stream, start, n, kind):
    if backend == "reference":
        idx = torch.arange(start, start + n)
        return {"words": _random.words, "uniform": _random.uniform, "gumbel": _random.gumbel}[kind](key, stream, idx)
    if backend == "cpu":
        kind_id = {"words": 0, "uniform": 1, "gumbel": 2}[kind]
        return torch.ops.vqfast_bench.philox_noise(_random.key_as_int64(key), stream, start, n, kind_id)
    from vqfast.triton_kernels.random import noise_triton
    return noise_triton(key, stream, start, n, kind, "cpu")


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=pytest.mark.skipif(not available("cpu"), reason="no cpu")),
                                     pytest.param("triton", marks=pytest.mark.skipif(not available("triton"), reason="no triton"))])
@pytest.mark.parametrize("kind", ["words", "uniform", "gumbel"])
def test_backends_bit_exact(backend, kind):
    for key in KEYS:
        for stream, start in [(1, 0), (2, 2 ** 33 - 3)]:
            ref = _noise("reference", key, stream, start, 2050, kind)
            got = _noise(backend, key, stream, start, 2050, kind)
            assert got.dtype == ref.dtype
            if kind == "words":
                assert torch.equal(got, ref)
            else:
                assert torch.equal(got.view(torch.int32), ref.view(torch.int32))


def test_uniform_range_and_mapping():
    w = torch.tensor([0, 511, 512, 2 ** 32 - 1])
    u = _random.uniform_from_words(w)
    assert u.tolist() == [2 ** -24, 2 ** -24, 3 * 2 ** -24, 1 - 2 ** -24]


def test_log_f32_close_to_log():
    x = torch.cat([torch.rand(100000) * 50 + 1e-6, _random.uniform(7, 1, torch.arange(100000)),
                   torch.tensor([2 ** -24, 1 - 2 ** -24, 1.0, 2.0, 16.6])])
    exact = torch.log(x.double())
    err = (_random.log_f32(x).double() - exact).abs()
    assert torch.all(err <= 2.5e-7 * exact.abs().clamp_min(1.0))


def test_distributions_kolmogorov_smirnov():
    n = 200000
    u = _random.uniform(2024, 1, torch.arange(n)).double().sort().values
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    # KS critical value for p = 1e-6: sqrt(-ln(p/2) / (2n))
    crit = math.sqrt(-math.log(0.5e-6) / (2 * n))
    assert (ecdf - u).abs().max() < crit
    g = _random.gumbel(2025, 1, torch.arange(n)).double().sort().values
    assert (ecdf - torch.exp(-torch.exp(-g))).abs().max() < crit


def test_philox_key_from_seed_and_generator():
    assert _random.philox_key(seed=5) == 5
    assert _random.philox_key(seed=-1) == 2 ** 64 - 1
    a = _random.philox_key(torch.Generator().manual_seed(3))
    b = _random.philox_key(torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    assert a == b == _random.philox_key(g) != _random.philox_key(g)
    torch.manual_seed(11)
    c = _random.philox_key()
    torch.manual_seed(11)
    assert c == _random.philox_key()
    assert 0 <= a < 2 ** 64
    with pytest.raises(ValueError, match="either generator or seed"):
        _random.philox_key(torch.Generator(), 3)
    with pytest.raises(TypeError, match="seed"):
        _random.philox_key(seed=1.5)
    assert _random.philox_key(3) == _random.philox_key(seed=3) == 3  # an int generator is a seed
    with pytest.raises(TypeError, match="generator"):
        _random.philox_key(generator=3.0)
    with pytest.raises(ValueError, match="either generator or seed"):
        _random.philox_key(3, 4)
    assert _random.key_as_int64(2 ** 64 - 1) == -1



def test_numpy_and_out_of_range_int_seeds():
    """A numpy integer is an int seed; as_generator takes any int mod 2^64 as philox_key does (was a
    TypeError for numpy ints, an 'Overflow when unpacking long long' ValueError past 2^64)."""
    assert _random.philox_key(np.int64(3)) == _random.philox_key(seed=np.int32(3)) == 3
    assert _random.philox_key(seed=np.int64(-1)) == 2 ** 64 - 1
    assert _random.as_generator(np.int64(7)).initial_seed() == 7
    assert _random.as_generator(2 ** 64 + 5).initial_seed() == 5
    assert _random.as_generator(-1).initial_seed() == 2 ** 64 - 1
    for bad in (np.bool_(True), np.float64(2.0), torch.tensor(3)):
        with pytest.raises(TypeError, match="generator"):
            _random.as_generator(bad)
        with pytest.raises(TypeError, match="seed"):
            _random.philox_key(seed=bad)

# ---------------------------------------------------------------- categorical draws

def _hard_rows(V: int = 1300) -> torch.Tensor:
    """Rows the categorical proposal must bound: wide ranges, ties, empty (-inf) blocks,
    a single finite id, huge magnitudes, values far below the max in other blocks."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(V, generator=g) * s for s in (0.01, 1.0, 3.0, 30.0, 1e4)]
    rows.append(torch.zeros(V))
    one = torch.full((V,), float("-inf"))
    one[V - 1] = -5.0
    rows.append(one)
    gaps = torch.randn(V, generator=g)
    gaps[256:768] = float("-inf")
    gaps[1000:] -= 60.0  # a block ~86 octaves below the max: clamped shift
    rows.append(gaps)
    rows.append(torch.linspace(0, -40, V))
    rows.append(torch.full((V,), 3e38))
    return torch.stack(rows)


def test_categorical_proposal_bounds_target():
    """The acceptance ratio e^(x - m) 2^23 s_b / (M s_hat_b what_k) never exceeds 1 (proof in
    vqfast/random.py), and acceptance stays high."""
    x = _hard_rows()
    n, V = x.shape
    m, _, what, s, s_hat = R.proposal_blocks(x)
    xb = torch.nn.functional.pad(x, (0, what.shape[1] * 256 - V), value=float("-inf")).view(what.shape)
    target = (R.exp_f32(xb - m[:, None, None]) * 2.0 ** 23).double() * s.double()[..., None]
    bound = R._ACCEPT_MARGIN * s_hat.double()[..., None] * what.double()
    assert torch.all(target <= bound * (1 - 2 ** -20))
    assert torch.all((what == 0) == (xb == float("-inf")))
    # acceptance = sum_k q_k ratio_k with proposal q_k = s_hat_b what_k / (s_b S)
    accept = (target / bound.clamp_min(1) * s_hat.double()[..., None] * what.double()
              / s.double().clamp_min(1)[..., None]).sum((1, 2)) / s_hat.sum(-1).double()
    assert torch.all(accept > 0.85)


def test_categorical_exact_distribution():
    V, n = 700, 120000
    g = torch.Generator().manual_seed(1)
    x = torch.randn(V, generator=g) * 2
    x[300:560] = float("-inf")  # an empty proposal block and a partial one
    x[5] = float("-inf")
    x[600:] -= 15.0
    draws = R.categorical(x.expand(n, V).contiguous(), 77, 1, torch.arange(n))
    counts = torch.bincount(draws, minlength=V).double()
    assert counts[x == float("-inf")].sum() == 0
    p = torch.softmax(x.double(), 0)
    big = p * n >= 5  # chi-square cells; the rest pooled
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([p[big], p[~big].sum()[None]]) * n
    stat = float(((obs - exp) ** 2 / exp).sum())
    assert stat < chi2.isf(1e-6, obs.numel() - 1)


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=pytest.mark.skipif(not available("cpu"), reason="no cpu")),
                                     pytest.param("triton", marks=pytest.mark.skipif(not available("triton"), reason="no triton"))])
def test_categorical_same_draws_on_hard_rows(backend):
    import vqfast
    x = _hard_rows(1025 if backend == "triton" else 1300)
    for seed in (0, 2 ** 64 - 5):
        exp = vqfast.ops.sample_logits(x, 1.0, seed=seed, backend="reference")
        got = vqfast.ops.sample_logits(x, 1.0, seed=seed, backend=backend)
        assert torch.equal(got, exp)
