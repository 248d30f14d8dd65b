"""What is built, which backend runs an op, and one warning when falling back.

Backends: "reference" (pure PyTorch, always there), "cpu" (the C++ extension
vqfast._C), "triton" (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1) and
"cuda" (the CUDA extension vqfast._C_cuda). `backend="auto"` (or the env
VQFAST_BACKEND) picks: CPU tensor -> cpu; CUDA tensor -> cuda where the op has a
CUDA kernel, else triton; nothing built -> reference, with one warning.
"""
from __future__ import annotations

import importlib
import os
import warnings

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but is not built or cannot run these tensors."""


def _load(module: str, hint: str) -> tuple[bool, str]:
    try:
        importlib.import_module(module)
    except ImportError as err:
        return False, f"{module} not importable ({err}); {hint}"
    return True, "built"


_CPU_OK, _CPU_WHY = _load("vqfast._C", "rebuild with `pip install -e . --no-build-isolation`")
_CUDA_OK, _CUDA_WHY = _load(
    "vqfast._C_cuda",
    "built only when torch has CUDA and nvcc is found (VQFAST_BUILD_CUDA=1)")


def _triton_status() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton not installed (pip install triton)"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "interpreter (TRITON_INTERPRET=1): CPU tensors accepted"
    if not torch.cuda.is_available():
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run kernels on CPU tensors)"
    return True, "CUDA"


def cpu_kernels() -> dict[str, str]:
    """The build of each CPU kernel group that runs here, e.g. {"search": "avx512-amx",
    "sampling": "avx512", "diffusion": "avx512", "ema": "avx512"} ("portable" without AVX-512
    or with VQFAST_CPU_PORTABLE=1; search "avx512-bf16" without AMX or with VQFAST_CPU_AMX=0);
    {} without the C++ extension.

    Raises ValueError when VQFAST_CPU_PORTABLE or VQFAST_CPU_AMX is set to anything but 0 or 1.
    """
    if not _CPU_OK:
        return {}
    from vqfast import _C
    return _C.cpu_kernels()


def _cpu_status() -> dict[str, object]:
    kernels = cpu_kernels()
    detail = _CPU_WHY
    if kernels:
        detail += "; kernels: " + ", ".join(f"{group} {isa}" for group, isa in kernels.items())
    return {"available": _CPU_OK, "detail": detail, "kernels": kernels}


def _cuda_status() -> dict[str, object]:
    if not _CUDA_OK:
        return {"available": False, "detail": _CUDA_WHY}
    if not torch.cuda.is_available():
        return {"available": False, "detail": "built, but no CUDA device is visible"}
    return {"available": True, "detail": _CUDA_WHY}


def backends() -> dict[str, dict[str, object]]:
    """Report each backend: {"name": {"available": bool, "detail": str}}; "cpu" also has
    "kernels" (see cpu_kernels)."""
    triton_ok, triton_why = _triton_status()
    return {
        "reference": {"available": True, "detail": "pure PyTorch"},
        "cpu": _cpu_status(),
        "triton": {"available": triton_ok, "detail": triton_why},
        "cuda": _cuda_status(),
    }


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve(op: str, backend: str, device: torch.device, *, has: tuple[str, ...]) -> str:
    """Name the backend that runs `op` on tensors of `device`.

    has: the backends that implement this op besides "reference".
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get("VQFAST_BACKEND", "auto")
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    if backend == "auto":
        return _auto(op, device, has)
    if backend == "reference":
        return backend
    if backend not in has:
        raise BackendUnavailableError(f"{op} has no {backend!r} kernel (it has: reference, {', '.join(has)})")
    status = backends()[backend]
    if not status["available"]:
        raise BackendUnavailableError(f"backend {backend!r} is not available: {status['detail']}")
    if backend == "cpu" and device.type != "cpu":
        raise BackendUnavailableError(f"backend 'cpu' needs CPU tensors, got {device}")
    if backend == "cuda" and device.type != "cuda":
        raise BackendUnavailableError(f"backend 'cuda' needs CUDA tensors, got {device}")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailableError(f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {device}")
    return backend


def _auto(op: str, device: torch.device, has: tuple[str, ...]) -> str:
    if device.type == "cpu":
        if "cpu" in has and _CPU_OK:
            return "cpu"
        if "cpu" in has:
            _warn_once("cpu", f"vqfast: C++ extension missing, ops run their PyTorch reference ({_CPU_WHY})")
        return "reference"
    if device.type == "cuda":
        if "cuda" in has and _CUDA_OK:
            return "cuda"
        if "triton" in has and _triton_status()[0]:
            return "triton"
        if has:
            _warn_once("gpu", f"vqfast: no GPU kernel usable for {device}, ops run their PyTorch reference "
                              f"(triton: {_triton_status()[1]}; cuda: {_CUDA_WHY})")
    return "reference"
