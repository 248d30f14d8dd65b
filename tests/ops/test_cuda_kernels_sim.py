"""Run the CUDA kernels (csrc/cuda/*.cu) on the CPU and check them against the references.

No GPU is needed: the .cu files are compiled by g++ against the stand-in headers of
tests/ops/cuda_sim (threads of a block are real threads, __syncthreads a barrier, warp
shuffles exchanged through memory), with each `kernel<<<grid, block, 0, stream>>>(...)`
rewritten to a call of the stand-in launcher. The kernels' own code runs unchanged;
the ATen bindings (GPU builds only) are mirrored here in a few lines of Python.
"""
import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from vqfast.ops.nearest_code import search_codebook
from vqfast.reference import nearest_code as ref_nc
from vqfast.reference.residual import level_codebooks
from tests.ops.test_nearest_code import check_indices

ROOT = Path(__file__).resolve().parents[2]
SIM = Path(__file__).resolve().parent / "cuda_sim"
LAUNCH = re.compile(r"(\w+<\w+>)<<<([^,]+),\s*([^,]+),\s*[^,]+,\s*[^>]+>>>\(")
DTYPE_ID = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_sim")
    sources = [SIM / "driver.cpp"]
    for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        text, n = LAUNCH.subn(r"::vqfast_sim::launch(\1, \2, \3, ", cu.read_text())
        assert n >= 1, f"no kernel launch found in {cu.name}"
        sources.append(out / f"{cu.stem}.cpp")
        sources[-1].write_text(text)
    so = out / "libvqfast_cuda_sim.so"
    cmd = ["g++", "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", f"-I{SIM}", f"-I{ROOT / 'csrc' / 'include'}",
           *map(str, sources), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return ctypes.CDLL(str(so))


def ptr(t):
    return ctypes.c_void_p(t.data_ptr())


def i64(v):
    return ctypes.c_int64(v)


def sim_nearest_code(lib, x, codebook, metric, gather=False):
    """As torch.ops.vqfast_cuda.nearest_code / quantize (csrc/cuda/nearest_code_binding.cpp)."""
    cb = search_codebook(codebook, metric)
    c_sq = cb.square().sum(1)
    n, d = x.shape
    idx = torch.full((n,), -7, dtype=torch.long)
    dist = torch.full((n,), float("nan"))
    src = codebook.to(x.dtype).contiguous()
    q = torch.full((n, d), float("nan"), dtype=x.dtype)
    rc = lib.sim_nearest_code(ptr(x), DTYPE_ID[x.dtype], i64(n), i64(d), i64(x.stride(0)), ptr(cb), ptr(c_sq),
                              i64(cb.shape[0]), int(metric == "l2"), ptr(idx), ptr(dist),
                              ptr(src) if gather else None, ptr(q) if gather else None)
    assert rc == 0
    return idx, dist, q


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K, d", [pytest.param(1, 1, 3, id="N1-K1-d3"), pytest.param(37, 5, 3, id="small"),
                                     pytest.param(70, 130, 33, id="odd")])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_code_kernel(lib, dtype, N, K, d, metric):
    g = torch.Generator().manual_seed(N + K + d)
    big = torch.randn(N, d + 5, generator=g).to(dtype)
    x = big[:, 2:2 + d]  # row stride d + 5: the kernel takes any row stride
    cb = torch.randn(K, d, generator=g).to(dtype)
    idx, dist, q = sim_nearest_code(lib, x, cb, metric, gather=True)
    check_indices(x, cb, idx, dist, metric)
    assert torch.equal(q, cb[idx].to(dtype))


def test_nearest_code_ties_and_nonfinite(lib):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(7, 33, generator=g)
    cb = torch.cat([base, base, base[:3]])  # duplicates: ties go to the lowest index
    x = torch.cat([base + 0.01 * torch.randn(7, 33, generator=g), base])
    x[3, 5], x[4, 0] = float("nan"), float("inf")
    cb[1] = float("nan")  # a NaN code never wins
    idx, dist, _ = sim_nearest_code(lib, x, cb, "l2")
    ref_idx, _ = ref_nc.nearest_code(x, cb)
    assert torch.equal(idx, ref_idx)
    assert idx[3] == 0 and idx[4] == 0 and dist[3].isnan() and dist[4].isnan()
    assert torch.equal(idx[7:], torch.tensor([0, 8, 2, 3, 4, 5, 6]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("order_kind", ["visible-first", "shuffled"])
def test_dual_codebook_kernel(lib, dtype, metric, order_kind):
    g = torch.Generator().manual_seed(5)
    n, d, k, k2 = 150, 19, 70, 9
    x = torch.randn(n, d, generator=g).to(dtype)
    visible = torch.zeros(n, dtype=torch.bool)
    visible[:64] = True
    visible[64:128] = torch.rand(64, generator=g) < 0.5
    e, e2 = torch.randn(k, d, generator=g).to(dtype), torch.randn(k2, d, generator=g).to(dtype)
    se, se2 = search_codebook(e, metric), search_codebook(e2, metric)
    sq, sq2 = se.square().sum(1), se2.square().sum(1)
    src, src2 = e.to(dtype).contiguous(), e2.to(dtype).contiguous()
    idx = torch.full((n,), -7, dtype=torch.long)
    q = torch.full((n, d), float("nan"), dtype=dtype)
    vis = visible.view(torch.uint8)
    # The binding passes visible-first; any permutation must give the same result.
    order = torch.argsort(1 - vis, stable=True) if order_kind == "visible-first" else torch.randperm(n, generator=g)
    rc = lib.sim_dual_codebook_quantize(ptr(x), DTYPE_ID[dtype], i64(n), i64(d), i64(d), ptr(vis), ptr(order),
                                        ptr(se), ptr(sq), i64(k), ptr(se2), ptr(sq2), i64(k2), int(metric == "l2"),
                                        ptr(src), ptr(src2), ptr(idx), ptr(q))
    assert rc == 0
    v, m = visible, ~visible
    assert bool((idx[v] < k).all()) and bool((idx[m] >= k).all())
    check_indices(x[v], e, idx[v], ((x[v].float() - e[idx[v]].float()) ** 2).sum(1) if metric == "l2"
                  else 1 - torch.cosine_similarity(x[v].float(), e[idx[v]].float()), metric)
    check_indices(x[m], e2, idx[m] - k, ((x[m].float() - e2[idx[m] - k].float()) ** 2).sum(1) if metric == "l2"
                  else 1 - torch.cosine_similarity(x[m].float(), e2[idx[m] - k].float()), metric)
    expected = torch.where(visible[:, None], e[idx.clamp(max=k - 1)], e2[(idx - k).clamp(min=0)]).to(dtype)
    assert torch.equal(q, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-level"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_residual_kernel(lib, dtype, shared, metric):
    g = torch.Generator().manual_seed(7)
    n, d, k, depth = 70, 21, 40, 3
    x = torch.randn(n, d, generator=g).to(dtype)
    codebook = torch.randn(*(() if shared else (depth,)), k, d, generator=g).to(dtype)
    cb = search_codebook(codebook, metric) if shared else torch.stack([search_codebook(c, metric) for c in codebook])
    c_sq = cb.square().sum(-1).contiguous()
    src = codebook.float().contiguous()
    residual = torch.empty(n, d)
    idx = torch.full((n, depth), -7, dtype=torch.long)
    q = torch.full((n, d), float("nan"), dtype=dtype)
    rc = lib.sim_residual_quantize(ptr(x), DTYPE_ID[dtype], i64(n), i64(d), i64(d), ptr(cb), ptr(c_sq), ptr(src),
                                   i64(k), i64(depth), int(shared), int(metric == "l2"), ptr(residual), ptr(idx),
                                   ptr(q))
    assert rc == 0
    r, total = x.float(), torch.zeros(n, d)
    for level, c in enumerate(level_codebooks(codebook, depth)):
        ref_idx, _ = ref_nc.nearest_code(r, c, metric)
        assert torch.equal(idx[:, level], ref_idx)  # random data: margins are clear
        code = c[idx[:, level]].float()
        r, total = r - code, total + code
    assert torch.equal(q, total.to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nearest_code_kernel_distance_of_near_matches(lib, dtype):
    """l2 dist of rows close to a code within fp32 tolerances of the reference (the GEMM
    expansion |x|^2 - 2 x.c + |c|^2 lost it to cancellation)."""
    g = torch.Generator().manual_seed(11)
    cb = torch.randn(130, 64, generator=g).to(dtype)
    x = (cb[torch.randint(0, 130, (70,), generator=g)].float() + 0.01 * torch.randn(70, 64, generator=g)).to(dtype)
    x[5] = float("nan")
    idx, dist, _ = sim_nearest_code(lib, x, cb, "l2")
    ref_idx, ref_dist = ref_nc.nearest_code(x, cb)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, equal_nan=True)
    _, dist_inf, _ = sim_nearest_code(lib, x[:3], torch.full((4, 64), float("nan")).to(dtype), "l2")
    assert torch.equal(dist_inf, torch.full((3,), float("inf")))
