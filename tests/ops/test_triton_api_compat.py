"""The Triton kernels use only the triton.language API of Triton 3.6 (the GPU machine's version;
this machine runs 3.9): every `tl.NAME` / `tl.math.NAME` they reference is exported by 3.6, and
every keyword they pass to one is a parameter of its 3.6 signature. The list is read from the
3.6.0 wheel's sources into tests/ops/data/triton_3_6_language.txt."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("data") / "triton_3_6_language.txt"
KERNELS = sorted((ROOT / "triton_kernels").glob("*.py"))


def triton_36() -> dict[str, set[str] | None]:
    """name -> parameter names (None: a class or a function with **kwargs, any keyword allowed)."""
    api = {}
    for line in SNAPSHOT.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, params = line.partition(": ")
        ps = set(params.split(",")) if params else set()
        api[name] = None if ("*" in ps or "**" in ps) else ps
    return api


def tl_uses(path: Path):
    """(name, keywords, line) for every `tl.NAME` / `tl.math.NAME` in a kernel file."""
    tree = ast.parse(path.read_text())
    calls = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            calls[id(node.func)] = [k.arg for k in node.keywords if k.arg]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id == "tl":
            name = node.attr
        elif isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "tl":
            name = f"{base.attr}.{node.attr}"
        else:
            continue
        if name == "math":
            continue
        yield name, calls.get(id(node), []), node.lineno


def test_snapshot_covers_the_basics():
    api = triton_36()
    assert {"load", "store", "dot", "where", "math.div_rn"} <= set(api)
    assert "to_tensor" not in api  # 3.6 defines it in core.py but does not export it


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p.name)
def test_kernels_use_only_the_triton_3_6_api(path):
    api = triton_36()
    problems = []
    for name, keywords, line in tl_uses(path):
        if name not in api:
            problems.append(f"{path.name}:{line}: tl.{name} is not in Triton 3.6's triton.language")
            continue
        allowed = api[name]
        if allowed is not None:
            problems += [f"{path.name}:{line}: tl.{name}(..., {k}=) has no such parameter in Triton 3.6"
                         for k in keywords if k not in allowed]
    assert not problems, "\n".join(problems)
