"""Build vqfast: the C++ CPU extension always, the CUDA extension when CUDA is present.

Env switches (0/1): VQFAST_BUILD_CPU (default 1), VQFAST_BUILD_CUDA (default: 1 when
torch has CUDA and nvcc is found), VQFAST_NATIVE (default 1: -march=native; 0 gives a
portable build). MAX_JOBS limits parallel compile jobs (ninja).
"""
import glob
import os
import shutil
import warnings

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    if value not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    include = [os.path.join(ROOT, "csrc", "include")]
    cxx = ["-O3", "-g0", "-fopenmp", "-DVQFAST_BUILD"]  # -g0: no debug info, faster builds
    if _flag("VQFAST_NATIVE", True):
        cxx.append("-march=native")
    exts = []
    if _flag("VQFAST_BUILD_CPU", True):
        exts.append(CppExtension(
            "vqfast._C",
            sorted(glob.glob("csrc/cpu/*.cpp")),
            include_dirs=include,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        ))
    has_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if _flag("VQFAST_BUILD_CUDA", has_cuda):
        if not has_cuda:
            warnings.warn("VQFAST_BUILD_CUDA=1 but torch has no CUDA or nvcc was not found: "
                          "skipping the CUDA extension")
        else:
            exts.append(CUDAExtension(
                "vqfast._C_cuda",
                sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp")),
                include_dirs=include,
                # No --use_fast_math: it flushes denormals and approximates sqrt/div,
                # which would change distances (and so indices) against the reference.
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
            ))
    elif shutil.which("nvcc") is None:
        print("vqfast: nvcc not found, building without the CUDA extension")
    return exts


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension
    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


setup(
    name="vqfast",
    version="0.1.0",
    description="Fused kernels for vector-quantized image generation",
    packages=find_packages(include=["vqfast", "vqfast.*"]) + ["vqfast.triton_kernels"],
    package_dir={"vqfast.triton_kernels": "triton_kernels"},
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "tqdm", "safetensors"],
    extras_require={
        "triton": ["triton"],
        "data": ["scikit-image", "scikit-learn", "matplotlib"],
        "bench": ["pytest-benchmark", "faiss-cpu", "vector-quantize-pytorch", "psutil", "matplotlib"],
        "test": ["pytest", "pytest-benchmark"],
    },
)
