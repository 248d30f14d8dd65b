"""Patch bookkeeping shared by every integration: the handle that undoes a patch, the
per-function counters behind `stats()`, and the lazy import of the peer library."""
from __future__ import annotations

import importlib
from collections import defaultdict
from types import ModuleType
from typing import Any, Callable

_COUNTS: dict[str, dict[str, int]] = defaultdict(lambda: {"served": 0, "passed_through": 0})
_MISSING = object()
_PATCH_MARK = "_vqfast_patch"  # set on every function a PatchHandle installs


def served(name: str) -> None:
    """Counts one call of the patched function `name` answered by vqfast kernels."""
    _COUNTS[name]["served"] += 1


def passed_through(name: str) -> None:
    """Counts one call of `name` handed to the peer's own code (an option vqfast cannot serve exactly)."""
    _COUNTS[name]["passed_through"] += 1


def stats() -> dict[str, dict[str, int]]:
    """Per patched function ("package.Class.method"): {"served": n, "passed_through": m} since import
    (or the last reset_stats())."""
    return {name: dict(c) for name, c in sorted(_COUNTS.items())}


def reset_stats() -> None:
    """Zeroes every counter of stats()."""
    _COUNTS.clear()


def require(package: str, pip_name: str) -> ModuleType:
    """Imports the peer library `package`, or raises ImportError naming what to install."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ImportError(f"this integration patches {pip_name}, which is not importable here "
                          f"(pip install {pip_name}): {e}") from e


def check_switches(**switches: Any) -> None:
    """Every per-hot-path switch must be a bool (a typo'd value would silently patch nothing)."""
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")


class PatchHandle:
    """What an apply_to_* call changed: `revert()` restores every original attribute; also a
    context manager (`with vi.apply_to_taming(): ...` reverts on exit).

        handle = vi.apply_to_taming(); ...; handle.revert()
    """

    def __init__(self, library: str):
        self.library = library
        self._undo: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, attr: str, new: Callable) -> None:
        """Replaces owner.attr (a class's method or a module's function) by `new`, remembering the original.
        An attribute an earlier handle already patched is left as it is (applying twice patches once,
        so reverting the handles in any order restores the original)."""
        current = owner.__dict__.get(attr, _MISSING) if isinstance(owner, type) else getattr(owner, attr)
        if getattr(current, _PATCH_MARK, False):
            return
        setattr(new, _PATCH_MARK, True)
        self._undo.append((owner, attr, current))
        setattr(owner, attr, new)

    @property
    def patched(self) -> list[str]:
        """The attributes this handle still holds patched, as "owner.attr"."""
        return [f"{getattr(o, '__qualname__', getattr(o, '__name__', o))}.{a}" for o, a, _ in self._undo]

    def revert(self) -> None:
        """Restores the originals, newest first; a second call does nothing."""
        while self._undo:
            owner, attr, original = self._undo.pop()
            if original is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)

    def __enter__(self) -> "PatchHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.revert()

    def __repr__(self) -> str:
        return f"PatchHandle({self.library}, patched={self.patched})"
