"""backend="auto" picks a GPU kernel (cuda, else triton) only for CUDA tensors: CPU
tensors go to the C++ kernel even when the Triton interpreter could run them."""
import pytest
import torch

import vqfast
from vqfast import _backend
from vqfast.ops.dual_codebook import HAS as DUAL_HAS
from vqfast.ops.nearest_code import HAS as NEAREST_HAS
from vqfast.ops.residual import HAS as RESIDUAL_HAS

OPS = [pytest.param("nearest_code", NEAREST_HAS, id="nearest_code"),
       pytest.param("dual_codebook_quantize", DUAL_HAS, id="dual_codebook_quantize"),
       pytest.param("residual_quantize", RESIDUAL_HAS, id="residual_quantize")]


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch):
    monkeypatch.delenv("VQFAST_BACKEND", raising=False)


@pytest.mark.parametrize("op, has", OPS)
def test_gpu_ops_have_triton_and_cuda(op, has):
    assert "triton" in has and "cuda" in has


@pytest.mark.parametrize("op, has", OPS)
def test_auto_on_cpu_tensors_never_picks_a_gpu_backend(op, has, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # triton usable on CPU tensors, but only by name
    monkeypatch.setattr(_backend, "_CUDA_OK", True)
    assert _backend.resolve(op, "auto", torch.device("cpu"), has=has) in ("cpu", "reference")


@pytest.mark.parametrize("op, has", OPS)
def test_auto_on_cuda_tensors_prefers_cuda_then_triton(op, has, monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(_backend, "_CUDA_OK", True)
    assert _backend.resolve(op, "auto", cuda, has=has) == "cuda"
    monkeypatch.setattr(_backend, "_CUDA_OK", False)
    monkeypatch.setattr(_backend, "_triton_status", lambda: (True, "CUDA"))
    assert _backend.resolve(op, "auto", cuda, has=has) == "triton"


def test_triton_by_name_needs_cuda_tensors_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(vqfast.BackendUnavailableError):
        _backend.resolve("nearest_code", "triton", torch.device("cpu"), has=NEAREST_HAS)


def test_auto_op_call_on_cpu_does_not_launch_triton(monkeypatch):
    import vqfast.triton_kernels.nearest_code as tk

    def boom(*args, **kwargs):
        raise AssertionError("auto dispatch launched a Triton kernel for CPU tensors")

    monkeypatch.setattr(tk, "nearest_code_triton", boom)
    monkeypatch.setattr(tk, "quantize_triton", boom)
    x, cb = torch.randn(5, 8), torch.randn(3, 8)
    vqfast.ops.nearest_code(x, cb)
    vqfast.ops.quantize(x, cb)
