"""Shared test set-up: Triton kernels run under the interpreter on CPU machines."""
import os

import torch

if not torch.cuda.is_available():
    # Must be set before any triton.jit function is created (at import of the kernels).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from vqfast import backends  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def available(name: str) -> bool:
    return bool(backends()[name]["available"])


def backend_params(*names: str):
    """pytest params for the named backends, skipped where not built here."""
    return [pytest.param(n, id=n, marks=pytest.mark.skipif(not available(n), reason=f"{n} backend not available"))
            for n in names]


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with a value no kernel would write, so unwritten elements fail."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(-7777)


def slow_enabled(config) -> bool:
    """Tests marked `slow` run with `--runslow` or VQFAST_SLOW=1 (long loops, > 4 GiB runs)."""
    return bool(config.getoption("--runslow")) or os.environ.get("VQFAST_SLOW") == "1"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="run the tests marked slow (the same as VQFAST_SLOW=1)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long or memory-heavy; skipped unless --runslow or VQFAST_SLOW=1")


def pytest_collection_modifyitems(config, items):
    if slow_enabled(config):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or VQFAST_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
