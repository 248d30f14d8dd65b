"""vqfast's counter-based noise: Philox known answers, bit-exact across reference / C++ / Triton,
keys from generator or seed, and the distributions of the uniform and Gumbel maps."""
import math

import pytest
import torch

from vqfast import _random
from vqfast.reference import random as R
from tests.conftest import available

KEYS = [0, 1, 12345678901234567, 2 ** 64 - 1, 0xDEADBEEF << 32]


def test_philox_known_answers():
    # Random123 kat_vectors, philox4x32_10.
    out = R.philox4x32(torch.tensor(0), 0, 0, 0, 0)
    assert [int(w) for w in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    m = 0xFFFFFFFF
    out = R.philox4x32(torch.tensor(m), m, m, m, 2 ** 64 - 1)
    assert [int(w) for w in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


def test_element_index_layout():
    idx = torch.arange(8)
    w = R.words(99, 3, idx)
    block1 = R.philox4x32(torch.tensor(1), 0, 3, 0, 99)
    assert w[4:].tolist() == [int(x) for x in block1]


def _noise(backend, key, stream, start, n, kind):
    if backend == "reference":
        idx = torch.arange(start, start + n)
        return {"words": R.words, "uniform": R.uniform, "gumbel": R.gumbel}[kind](key, stream, idx)
    if backend == "cpu":
        kind_id = {"words": 0, "uniform": 1, "gumbel": 2}[kind]
        return torch.ops.vqfast_cpu.philox_noise(_random.key_as_int64(key), stream, start, n, kind_id)
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
    u = R.uniform_from_words(w)
    assert u.tolist() == [2 ** -24, 2 ** -24, 3 * 2 ** -24, 1 - 2 ** -24]


def test_log_f32_close_to_log():
    x = torch.cat([torch.rand(100000) * 50 + 1e-6, R.uniform(7, 1, torch.arange(100000)),
                   torch.tensor([2 ** -24, 1 - 2 ** -24, 1.0, 2.0, 16.6])])
    exact = torch.log(x.double())
    err = (R.log_f32(x).double() - exact).abs()
    assert torch.all(err <= 2.5e-7 * exact.abs().clamp_min(1.0))


def test_distributions_kolmogorov_smirnov():
    n = 200000
    u = R.uniform(2024, 1, torch.arange(n)).double().sort().values
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    # KS critical value for p = 1e-6: sqrt(-ln(p/2) / (2n))
    crit = math.sqrt(-math.log(0.5e-6) / (2 * n))
    assert (ecdf - u).abs().max() < crit
    g = R.gumbel(2025, 1, torch.arange(n)).double().sort().values
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
    with pytest.raises(TypeError, match="generator"):
        _random.philox_key(generator=3)
    assert _random.key_as_int64(2 ** 64 - 1) == -1
