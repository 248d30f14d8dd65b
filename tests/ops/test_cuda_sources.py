"""The CUDA sources compile on machines without a GPU, so a broken file fails the suite.

Every csrc/**/*.cu goes through `nvcc -c` (as .ci/run does); the ATen bindings
(csrc/cuda/*.cpp, built only on GPU machines) get a g++ syntax check against this
torch's headers and the CUDA toolkit's. Skipped where nvcc / the headers are missing.
"""
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_ext

ROOT = Path(__file__).resolve().parents[2]
CU_FILES = sorted((ROOT / "csrc").rglob("*.cu"))
NVCC = shutil.which("nvcc")


def _cuda_include() -> Path | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_runtime.h").exists():
            return Path(home) / "include"
    return None


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("path", CU_FILES, ids=[p.name for p in CU_FILES])
def test_cu_file_compiles(path):
    _run([NVCC, "-O3", "-std=c++17", "-arch=sm_90", "-Icsrc/include", "-c", str(path), "-o", os.devnull])


def test_every_op_with_a_cuda_kernel_has_a_binding():
    bindings = {p.name.removesuffix("_binding.cpp") for p in (ROOT / "csrc" / "cuda").glob("*_binding.cpp")}
    assert {p.stem for p in (ROOT / "csrc" / "cuda").glob("*.cu")} <= bindings


@pytest.mark.skipif(shutil.which("g++") is None or _cuda_include() is None, reason="g++ or CUDA headers not found")
def test_bindings_syntax(tmp_path):
    # A CPU build of torch ships c10/cuda headers but not this generated one.
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    # One translation unit for all bindings: torch's headers are parsed once.
    unit = tmp_path / "bindings.cpp"
    unit.write_text("".join(f'#include "{p}"\n' for p in sorted((ROOT / "csrc" / "cuda").glob("*.cpp"))))
    includes = [tmp_path, *cpp_ext.include_paths(), _cuda_include(), sysconfig.get_paths()["include"],
                ROOT / "csrc" / "include", ROOT / "csrc" / "cuda"]
    _run(["g++", "-fsyntax-only", "-std=c++20", *[f"-I{p}" for p in includes], str(unit)])

