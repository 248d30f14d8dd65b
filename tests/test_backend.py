"""Backend reporting, forcing and the one-time fallback warning."""
import subprocess
import sys
import warnings

import pytest
import torch

import vqfast
from vqfast import _backend


def test_backends_report_every_backend():
    status = vqfast.backends()
    assert set(status) == {"reference", "cpu", "triton", "cuda"}
    assert status["reference"]["available"] is True
    assert all(isinstance(s["detail"], str) and s["detail"] for s in status.values())


def test_env_forces_backend(monkeypatch):
    monkeypatch.setenv("VQFAST_BACKEND", "reference")
    assert _backend.resolve("op", "auto", torch.device("cpu"), has=("cpu",)) == "reference"
    monkeypatch.setenv("VQFAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend must be one of"):
        _backend.resolve("op", "auto", torch.device("cpu"), has=("cpu",))


def test_unbuilt_or_unimplemented_backend_is_an_error(monkeypatch):
    with pytest.raises(vqfast.BackendUnavailableError, match="has no 'cuda' kernel"):
        _backend.resolve("op", "cuda", torch.device("cpu"), has=("cpu",))
    monkeypatch.setattr(_backend, "_CPU_OK", False)
    with pytest.raises(vqfast.BackendUnavailableError, match="not available"):
        _backend.resolve("op", "cpu", torch.device("cpu"), has=("cpu",))


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_backend, "_CPU_OK", False)
    monkeypatch.setattr(_backend, "_warned", set())
    monkeypatch.delenv("VQFAST_BACKEND", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _backend.resolve("op", "auto", torch.device("cpu"), has=("cpu",))
        second = _backend.resolve("op", "auto", torch.device("cpu"), has=("cpu",))
    assert first == second == "reference"
    assert len([w for w in caught if "C++ extension missing" in str(w.message)]) == 1


def test_import_without_extension_runs_reference():
    code = ("import sys; sys.modules['vqfast._C'] = None\n"
            "import warnings, torch, vqfast\n"
            "assert not vqfast.backends()['cpu']['available']\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    idx, _ = vqfast.ops.nearest_code(torch.eye(3), torch.eye(3))\n"
            "    vqfast.ops.nearest_code(torch.eye(3), torch.eye(3))\n"
            "assert idx.tolist() == [0, 1, 2]\n"
            "assert sum('extension missing' in str(x.message) for x in w) == 1\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_info_command_runs():
    out = subprocess.run([sys.executable, "-m", "vqfast", "info"], check=True, capture_output=True, text=True)
    assert "reference" in out.stdout and "cpu" in out.stdout
