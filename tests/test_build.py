"""The C++ build: the sources compiled without FMA contraction, the two builds of the kernels
with AVX-512 code (portable / AVX-512, chosen at run time) and VQFAST_CPU_PORTABLE; and, with
VQFAST_SLOW=1 (or --runslow), a second, portable build (VQFAST_NATIVE=0) that must give the same results."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import available

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CPU_SOURCES = sorted((CSRC / "cpu").rglob("*.cpp"))
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
AVX512_FEATURES = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "f16c", "bmi2"}

cpu_only = pytest.mark.skipif(not available("cpu"), reason="cpu backend not available")


def _setup_constant(name: str):
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py defines no {name}")


def _key(kind: str, name: str, including: Path):
    """'<name>' for a system header, else the resolved path of a local one."""
    if kind == "<":
        return f"<{name}>"
    for base in (including.parent, CSRC / "include"):
        if (base / name).is_file():
            return (base / name).resolve()
    raise AssertionError(f"{including}: #include \"{name}\" not found")


def _closure(text: str, path: Path, seen=None) -> set:
    """Every header reached from the #includes of text (held by path), transitively."""
    seen = set() if seen is None else seen
    for kind, name in INCLUDE.findall(text):
        key = _key(kind, name, path)
        if key not in seen:
            seen.add(key)
            if isinstance(key, Path):
                _closure(key.read_text(), key, seen)
    return seen


def test_fp_exact_sources_are_every_file_that_includes_philox():
    """-ffp-contract=off (setup.py) reaches every translation unit that includes philox.h."""
    exact = set(_setup_constant("FP_EXACT_SOURCES"))
    philox = (CSRC / "include" / "vqfast" / "philox.h").resolve()
    names = {p: p.relative_to(ROOT).as_posix() for p in CPU_SOURCES}
    need = {names[p] for p in CPU_SOURCES if philox in _closure(p.read_text(), p)}
    assert "csrc/cpu/ceilings.cpp" in need  # through sampling_row.h
    assert need <= exact, f"include philox.h but compiled with FMA contraction: {sorted(need - exact)}"
    assert exact <= set(names.values()), f"not C++ sources: {sorted(exact - set(names.values()))}"
    pragmas = [n for p, n in names.items() if "fp-contract" in p.read_text() and "pragma" in p.read_text()]
    assert not [n for n in pragmas if re.search(r"#\s*pragma GCC optimize", (ROOT / n).read_text())]


def _variant(path: Path) -> bool:
    return re.search(r"^namespace (vqfast::)?VQFAST_ISA\b", path.read_text(), re.M) is not None


def test_files_built_twice_include_shared_headers_before_the_avx512_target():
    """Headers not compiled once per build (system, ATen, philox.h, ...) are included before
    VQFAST_ISA_TARGET_BEGIN, so no inline function of theirs is compiled for AVX-512 (isa.h)."""
    marker = re.compile(r"^VQFAST_ISA_TARGET_BEGIN$", re.M)
    twice = [p for p in (CSRC / "cpu").glob("*.cpp") if marker.search(p.read_text())]
    wrappers = sorted((CSRC / "cpu" / "avx512").glob("*.cpp"))
    assert sorted(p.name for p in twice) == [p.name for p in wrappers]
    for w in wrappers:
        assert re.search(rf'#define VQFAST_AVX512 1\s+#include "\.\./{re.escape(w.name)}"', w.read_text()), w
    for p in twice:
        before, after = marker.split(p.read_text(), maxsplit=1)
        shared = _closure(before, p)
        late, todo = [], [(after, p)]
        while todo:
            text, path = todo.pop()
            for kind, name in INCLUDE.findall(text):
                key = _key(kind, name, path)
                if key in shared:
                    continue
                if isinstance(key, Path) and _variant(key):
                    todo.append((key.read_text(), key))
                else:
                    late.append(key)
        assert not late, f"{p.name}: include these before VQFAST_ISA_TARGET_BEGIN: {sorted(map(str, late))}"


def _cpu_has_avx512() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = re.search(r"^flags\s*:(.*)$", text, re.M)
    return flags is not None and AVX512_FEATURES <= set(flags.group(1).split())


def _python(code: str, portable: str | None, path: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VQFAST_CPU_PORTABLE"}
    if portable is not None:
        env["VQFAST_CPU_PORTABLE"] = portable
    if path is not None:
        env["PYTHONPATH"] = str(path)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=path or ROOT)


_KERNELS = "import json, vqfast; print(json.dumps(vqfast.backends()['cpu']['kernels']))"


@cpu_only
def test_cpu_kernels_follow_the_cpu_and_the_env_flag():
    auto = json.loads(_python(_KERNELS, None).stdout)
    assert set(auto) == {"search", "sampling", "diffusion", "ema"}
    want = "avx512" if _cpu_has_avx512() else "portable"
    assert {k: v for k, v in auto.items() if k != "search"} == dict.fromkeys(("sampling", "diffusion", "ema"), want)
    assert auto["search"].startswith(want)
    assert json.loads(_python(_KERNELS, "0").stdout) == auto
    assert set(json.loads(_python(_KERNELS, "1").stdout).values()) == {"portable"}


@cpu_only
def test_env_flag_other_than_0_or_1_is_a_value_error():
    code = ("import torch, vqfast\n"
            "for call in (vqfast.backends, lambda: torch.ops.vqfast_cpu.sample_logits("
            "torch.zeros(2, 3), None, 1.0, 1.0, 0, 1.0, 0)):\n"
            "    try:\n"
            "        call()\n"
            "    except ValueError as e:\n"
            "        print(e)\n")
    out = _python(code, "yes").stdout.splitlines()
    assert len(out) == 2 and all(line.startswith("VQFAST_CPU_PORTABLE must be 0 or 1, got 'yes'") for line in out)


# Outputs of every op with two kernel builds (torch.save'd dict) and the kernels in use.
_RESULTS = r"""
import json, sys, torch, vqfast
import vqfast.diffusion as D
g = torch.Generator().manual_seed(0)
x = 3 * torch.randn(3, 7, 1000, generator=g)
x[0, 0] = 0.0  # 256-blocks tied at their max
masked = torch.rand(3, 7, generator=g) < 0.6
masked[:, 0] = True
out = {}
for kw in ({"temperature": 0.0}, {}, {"top_k": 50}, {"top_p": 0.7}, {"top_k": 300, "top_p": 0.9}):
    out["sample_logits " + str(kw)] = vqfast.ops.sample_logits(x, seed=1, backend="cpu", **kw)
for choice in ("argmax", "sample"):
    sel = vqfast.ops.gumbel_topk_select(x, masked, 1, 2.0, choice, seed=2, backend="cpu")
    out["gumbel tokens " + choice] = torch.cat([sel.tokens, sel.reveal.long()])
    out["gumbel confidence " + choice] = sel.confidence
out["select_and_sample_topk"] = torch.cat(vqfast.ops.select_and_sample_topk(x, ~masked, 40, 3, 0.8, seed=3, backend="cpu"))
sched = D.CosineSchedule(30)
t = torch.tensor([1, 9, 30])
for kind in ("uniform", "absorbing"):
    z = torch.randint(0, 1000 + (kind == "absorbing"), (3, 7), generator=g)
    x0 = torch.randint(0, 1000, (3, 7), generator=g)
    out["posterior_sample " + kind] = vqfast.ops.posterior_sample(x, z, t, sched, seed=4, transition=kind, backend="cpu")
    out["posterior_logprobs " + kind] = vqfast.ops.posterior_logprobs(x, z, t, sched, transition=kind, backend="cpu")
    xg = x.clone().requires_grad_()
    kl = vqfast.ops.vlb_kl(x0, xg, z, t, sched, transition=kind, backend="cpu")
    kl.sum().backward()
    out["vlb_kl " + kind] = kl.detach()
    out["vlb_kl grad " + kind] = xg.grad
xs = torch.randn(500, 37, generator=g)
idx = torch.randint(0, 11, (500,), generator=g)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    out["ema_statistics " + str(dtype)] = torch.cat([t.reshape(-1) for t in vqfast.ops.ema_statistics(xs.to(dtype), idx, 11, backend="cpu")])
torch.save(out, sys.argv[1])
print(json.dumps(vqfast.backends()["cpu"]["kernels"]))
"""


def _results(tmp_path: Path, name: str, portable: str | None, path: Path | None = None):
    out = tmp_path / f"{name}.pt"
    run = _python(_RESULTS.replace("sys.argv[1]", repr(str(out))), portable, path)
    assert run.returncode == 0, run.stderr
    return torch.load(out), json.loads(run.stdout)


def _assert_same(a: dict, b: dict, exact: bool):
    assert a.keys() == b.keys()
    for k in a:
        if exact or not a[k].is_floating_point() or k.startswith("gumbel confidence"):
            assert torch.equal(a[k], b[k]), k  # tokens and confidences: the same on every build and CPU path
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, equal_nan=True, msg=k)


@cpu_only
def test_portable_kernels_give_the_same_tokens(tmp_path):
    """VQFAST_CPU_PORTABLE=1 (the kernels of CPUs without AVX-512): the same tokens, the same
    floats up to rounding (other exp and sum orders)."""
    fast, _ = _results(tmp_path, "auto", None)
    portable, kernels = _results(tmp_path, "portable", "1")
    assert set(kernels.values()) == {"portable"}
    _assert_same(fast, portable, exact=False)


@cpu_only
@pytest.mark.slow  # builds a second copy of the extension (minutes)
def test_portable_build_runs_the_avx512_kernels_with_the_same_results(tmp_path):
    """A VQFAST_NATIVE=0 build still runs the AVX-512 kernels on an AVX-512 CPU (chosen at run
    time) and gives the results of this build bit for bit."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("build", "*.so", "__pycache__", ".git", "*.egg-info")
    for part in ("csrc", "vqfast", "triton_kernels", "tests"):
        shutil.copytree(ROOT / part, src / part, ignore=ignore)
    shutil.copy(ROOT / "setup.py", src)
    env = dict(os.environ, VQFAST_NATIVE="0", VQFAST_BUILD_CUDA="0")
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, env=env,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "-march=native" not in build.stdout
    native, native_kernels = _results(tmp_path, "native", None)
    portable, portable_kernels = _results(tmp_path, "portable_build", None, src)
    assert portable_kernels == native_kernels
    if _cpu_has_avx512():
        assert portable_kernels["sampling"] == "avx512"
    _assert_same(native, portable, exact=True)
