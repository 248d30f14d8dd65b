"""nearest_code / quantize: every backend against the reference oracle."""
import os
import subprocess
import sys

import pytest
import torch

import vqfast
from vqfast.ops.nearest_code import HAS
from vqfast.reference import nearest_code as ref
from tests.conftest import available, backend_params

BACKENDS = backend_params("reference", *HAS)
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]
SHAPES = [pytest.param(1, 1, 3, id="N1-K1-d3"), pytest.param(37, 5, 3, id="small"),
          pytest.param(301, 257, 257, id="odd"), pytest.param(130, 1100, 64, id="K-over-tile")]


def check_nearest(x, codebook, idx, metric):
    """Exact where the oracle's best-vs-second margin is clear; else the chosen code is as near.

    Returns the oracle's distance of the chosen codes (float64) and the tolerance used."""
    d = ref.code_distances(x.reshape(-1, x.shape[-1]), codebook, metric)
    best2 = d.topk(min(2, d.shape[1]), dim=1, largest=False).values
    tol = 1e-3 * (1 + best2[:, 0].abs()) if x.dtype == torch.float32 else 2e-2 * (1 + best2[:, 0].abs())
    ref_idx = d.nan_to_num(nan=float("inf")).argmin(1)  # the oracle's rule: first minimum, NaN never wins
    clear = (best2[:, -1] - best2[:, 0]) > tol if d.shape[1] > 1 else torch.ones_like(tol, dtype=torch.bool)
    idx = idx.reshape(-1)
    assert idx.min() >= 0 and idx.max() < codebook.shape[0]
    assert torch.equal(idx[clear], ref_idx[clear])
    chosen = d.gather(1, idx[:, None]).squeeze(1)
    assert torch.all(chosen <= best2[:, 0] + tol)
    return chosen, tol


def check_indices(x, codebook, idx, dist, metric):
    chosen, tol = check_nearest(x, codebook, idx, metric)
    torch.testing.assert_close(dist.reshape(-1).double(), chosen, atol=float(tol.max()), rtol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K, d", SHAPES)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_code_matches_reference(backend, dtype, N, K, d, metric):
    g = torch.Generator().manual_seed(N * 1000 + K + d)
    x = torch.randn(N, d, generator=g).to(dtype)
    cb = torch.randn(K, d, generator=g).to(dtype)
    idx, dist = vqfast.ops.nearest_code(x, cb, metric=metric, backend=backend)
    assert idx.dtype == torch.long and dist.dtype == torch.float32 and idx.shape == (N,)
    check_indices(x, cb, idx, dist, metric)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_lowest_index(backend):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(7, 33, generator=g)
    cb = torch.cat([base, base, base[:3]])  # every code appears two or three times
    x = torch.cat([base + 0.01 * torch.randn(7, 33, generator=g), base])
    idx, _ = vqfast.ops.nearest_code(x, cb, backend=backend)
    assert torch.equal(idx, torch.arange(7).repeat(2))
    idx_cos, _ = vqfast.ops.nearest_code(base, cb, metric="cosine", backend=backend)
    assert torch.equal(idx_cos, torch.arange(7))


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_dims_and_noncontiguous(backend):
    g = torch.Generator().manual_seed(1)
    big = torch.randn(4, 9, 40, generator=g)
    x = big[:, ::2, 5:29]  # [4, 5, 24], not contiguous
    cb = torch.randn(24, 50, generator=g).T  # [50, 24] transposed view
    idx, dist = vqfast.ops.nearest_code(x, cb, backend=backend)
    assert idx.shape == (4, 5) and dist.shape == (4, 5)
    check_indices(x, cb, idx, dist, "l2")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_rows(backend):
    x = torch.randn(4, 8)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    cb = torch.randn(6, 8)
    cb[0] = float("nan")  # a NaN code never wins
    idx, dist = vqfast.ops.nearest_code(x, cb, backend=backend)
    ref_idx, ref_dist = ref.nearest_code(x, cb)
    assert torch.equal(idx, ref_idx)
    assert idx[1] == 0 and idx[2] == 0 and torch.isnan(dist[1]) and torch.isnan(dist[2])
    assert idx[0] != 0 and idx[3] != 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_x(backend):
    idx, dist = vqfast.ops.nearest_code(torch.randn(0, 5), torch.randn(3, 5), backend=backend)
    assert idx.shape == (0,) and dist.shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_straight_through_and_losses(backend, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 11, 20, generator=g).to(dtype).requires_grad_()
    cb = torch.randn(30, 20, generator=g).to(dtype).requires_grad_()
    out = vqfast.ops.quantize(x, cb, backend=backend)
    z_ref, idx_ref, commit_ref, cbl_ref = ref.quantize(x, cb)
    assert torch.equal(out.indices, idx_ref)
    assert out.z_q.dtype == dtype
    # z_q's value is exactly the codes (the reference's x + (c - x) rounds in fp16/bf16)
    assert torch.equal(out.z_q.detach(), cb.detach()[idx_ref])
    torch.testing.assert_close(out.commit_loss, commit_ref)
    torch.testing.assert_close(out.codebook_loss, cbl_ref)
    up = torch.randn(x.shape, generator=g).to(dtype)
    (out.z_q * up).sum().add(out.codebook_loss).add(out.commit_loss).backward()
    gx, gc = x.grad.clone(), cb.grad.clone()
    x.grad, cb.grad = None, None
    (z_ref * up).sum().add(cbl_ref).add(commit_ref).backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gc, cb.grad)


def test_quantize_without_codebook_grad_has_no_codebook_loss():
    z_q, idx, commit = vqfast.ops.quantize(torch.randn(4, 3), torch.randn(5, 3))
    assert commit.ndim == 0
    assert vqfast.ops.quantize(torch.randn(4, 3), torch.randn(5, 3)).codebook_loss is None


def test_torch_compile_traces_nearest_code():
    x, cb = torch.randn(9, 16), torch.randn(12, 16)
    fn = torch.compile(lambda a, b: vqfast.ops.nearest_code(a, b)[0], backend="eager", fullgraph=True)
    assert torch.equal(fn(x, cb), vqfast.ops.nearest_code(x, cb)[0])


_PORTABLE_SCRIPT = """
import sys, torch, vqfast
g = torch.Generator().manual_seed(11)
x, cb = torch.randn(203, 67, generator=g), torch.randn(300, 67, generator=g)
cb[7] = cb[3]
out = []
for dt in (torch.float32, torch.bfloat16):
    for metric in ("l2", "cosine"):
        out.append(vqfast.ops.nearest_code(x.to(dt), cb.to(dt), metric=metric, backend="cpu")[0])
out.append(vqfast.ops.residual_quantize(x, cb, 2, backend="cpu").indices.reshape(-1))
torch.save(torch.cat(out), sys.argv[1])
"""


@pytest.mark.skipif(not available("cpu"), reason="cpu backend not available")
def test_portable_cpu_kernels_match(tmp_path):
    """VQFAST_CPU_PORTABLE=1 (the path of CPUs without AVX-512) gives the same indices."""
    results = []
    for portable in ("1", None):
        env = {k: v for k, v in os.environ.items() if k != "VQFAST_CPU_PORTABLE"}
        if portable:
            env["VQFAST_CPU_PORTABLE"] = portable
        path = tmp_path / f"out{portable}.pt"
        subprocess.run([sys.executable, "-c", _PORTABLE_SCRIPT, str(path)], env=env, check=True)
        results.append(torch.load(path))
    assert torch.equal(results[0], results[1])
    g = torch.Generator().manual_seed(11)
    x, cb = torch.randn(203, 67, generator=g), torch.randn(300, 67, generator=g)
    cb[7] = cb[3]
    assert torch.equal(results[0][:203], ref.nearest_code(x, cb)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_quantize_outputs_fully_written(backend):
    """A first call fills freed buffers with NaN codes; the next call must overwrite every element."""
    g = torch.Generator().manual_seed(10)
    x = torch.randn(300, 24, generator=g)
    first = vqfast.ops.quantize(x, torch.full((5, 24), float("nan")), backend=backend)
    assert torch.isnan(first.z_q).all()
    del first
    cb = torch.randn(40, 24, generator=g)
    out = vqfast.ops.quantize(x, cb, backend=backend)
    assert torch.equal(out.indices, ref.nearest_code(x, cb)[0])
    assert torch.equal(out.z_q.detach(), cb[out.indices])  # exactly the codes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nonfinite_rows_with_many_tied_codes(backend, metric):
    """An inf row against 63 equal codes (more ties than the CPU filter keeps as candidates)
    still gets idx 0 and dist NaN (the CPU re-rank returned dist inf)."""
    cb = torch.randn(1, 12, generator=torch.Generator().manual_seed(12)).expand(63, 12).contiguous()
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(13))
    x[0, 0], x[1, 3] = float("inf"), float("nan")
    idx, dist = vqfast.ops.nearest_code(x, cb, metric=metric, backend=backend)
    assert idx.tolist() == [0, 0, 0] and torch.isnan(dist[:2]).all() and torch.isfinite(dist[2])
