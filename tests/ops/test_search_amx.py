"""The CPU search's AMX candidate pass (fp32/fp16 values rounded to bf16, a wider rigorous
bound, the exact float64 re-rank) gives the reference's indices and distances exactly, also
where bf16 cannot tell codes apart, and equals the AVX-512 pass (VQFAST_CPU_AMX=0)."""
import os
import subprocess
import sys

import pytest
import torch

import vqfast
from vqfast.reference import nearest_code as ref
from tests.conftest import available

pytestmark = pytest.mark.skipif(not available("cpu"), reason="cpu backend not available")
AMX = available("cpu") and vqfast.backends()["cpu"]["kernels"].get("search") == "avx512-amx"


def _check(x, cb, metric="l2"):
    idx, dist = vqfast.ops.nearest_code(x, cb, metric=metric, backend="cpu")
    ridx, rdist = ref.nearest_code(x, cb, metric)
    assert torch.equal(idx, ridx)
    tol = 0 if metric == "l2" else 1e-6  # l2: the same float64 distance; cosine: its own formula
    assert torch.allclose(dist, rdist, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("d", [1, 5, 31, 32, 33, 96, 257])
def test_depths_around_the_tile_depth(d, metric):
    g = torch.Generator().manual_seed(d)
    _check(torch.randn(53, d, generator=g), torch.randn(131, d, generator=g), metric)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_codes_bf16_cannot_tell_apart(metric):
    """Pairs of codes 1e-4 apart in relative terms round to the same bf16 values: the re-rank decides."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(40, 64, generator=g)
    cb = torch.cat([base, base * (1 + 1e-4 * torch.randn(40, 1, generator=g)), base])  # + exact duplicates
    x = base[torch.randint(40, (300,), generator=g)] + 1e-3 * torch.randn(300, 64, generator=g)
    _check(x, cb, metric)


def test_clustered_codes_fall_back_to_the_fp32_pass():
    """Codes far closer to each other than to the origin: the bf16 bound keeps too many candidates."""
    g = torch.Generator().manual_seed(2)
    cb = 100 + 1e-3 * torch.randn(700, 48, generator=g)
    _check(100 + 1e-3 * torch.randn(997, 48, generator=g), cb)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    g = torch.Generator().manual_seed(3)
    x, cb = torch.randn(211, 40, generator=g).to(dtype), torch.randn(77, 40, generator=g).to(dtype)
    _check(x, cb)
    _check(x, cb, "cosine")


def test_large_small_and_non_finite_values():
    g = torch.Generator().manual_seed(4)
    cb = torch.randn(90, 24, generator=g)
    x = torch.randn(64, 24, generator=g)
    x[0] *= 1e30  # beyond bf16 precision concerns: huge but finite
    x[1] *= 1e-40  # denormal fp32 values: flushed by the conversion, inside the bound
    x[2, 3] = float("nan")
    x[3, 0] = float("inf")
    cb[5] *= 1e-39
    _check(x, cb)


_SCRIPT = """
import sys, torch, vqfast
g = torch.Generator().manual_seed(5)
out = []
for N, K, d in ((300, 1024, 256), (97, 65, 33), (16, 1, 7)):
    x, cb = torch.randn(N, d, generator=g), torch.randn(K, d, generator=g)
    for metric in ("l2", "cosine"):
        idx, dist = vqfast.ops.nearest_code(x, cb, metric=metric, backend="cpu")
        out += [idx.double(), dist.double()]
    out.append(vqfast.ops.residual_quantize(x, cb, 3, backend="cpu").z_q.double().reshape(-1))
print(vqfast.backends()["cpu"]["kernels"]["search"])
torch.save(torch.cat(out), sys.argv[1])
"""


@pytest.mark.skipif(not AMX, reason="this CPU does not run the AMX pass")
def test_amx_pass_equals_the_avx512_pass(tmp_path):
    results, names = [], []
    for flag in ("1", "0"):
        path = tmp_path / f"out{flag}.pt"
        run = subprocess.run([sys.executable, "-c", _SCRIPT, str(path)], env={**os.environ, "VQFAST_CPU_AMX": flag},
                             check=True, capture_output=True, text=True)
        names.append(run.stdout.strip())
        results.append(torch.load(path))
    assert names == ["avx512-amx", "avx512-bf16"]
    assert torch.equal(results[0], results[1])


def test_bad_amx_flag_is_a_value_error():
    run = subprocess.run([sys.executable, "-c", "import vqfast; vqfast.backends()"],
                         env={**os.environ, "VQFAST_CPU_AMX": "yes"}, capture_output=True, text=True)
    assert run.returncode != 0 and "VQFAST_CPU_AMX must be 0 or 1" in run.stderr
