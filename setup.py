"""Build vqfast: the C++ CPU extension always, the CUDA extension when CUDA is present.

Env switches (0/1): VQFAST_BUILD_CPU (default 1), VQFAST_BUILD_CUDA (default: 1 when
torch has CUDA and nvcc is found), VQFAST_NATIVE (default 1: -march=native; 0 gives a
portable build; the AVX-512 kernels are built either way and chosen at run time).
VQFAST_SANITIZE=address,undefined (or one of them) builds the C++ extension with ASan /
UBSan (.ci/sanitize runs the op tests under it). MAX_JOBS limits parallel compile jobs (ninja).
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


# C++ sources compiled with -ffp-contract=off: every file that includes vqfast/philox.h (its
# noise and exp / log steps must not be contracted into FMAs to match the reference and Triton
# bit for bit; tests/test_build.py checks that none is missing).
FP_EXACT_SOURCES = (
    "csrc/cpu/avx512/ceilings.cpp",
    "csrc/cpu/avx512/diffusion.cpp",
    "csrc/cpu/avx512/sampling.cpp",
    "csrc/cpu/ceilings.cpp",
    "csrc/cpu/diffusion.cpp",
    "csrc/cpu/diffusion_logprobs_grad.cpp",
    "csrc/cpu/random.cpp",
    "csrc/cpu/sampling.cpp",
)

SANITIZERS = ("address", "undefined")


def _sanitize_flags():
    """(compile, link) flags for VQFAST_SANITIZE, a comma-separated subset of SANITIZERS."""
    value = os.environ.get("VQFAST_SANITIZE", "")
    if not value:
        return [], []
    names = value.split(",")
    if not set(names) <= set(SANITIZERS) or len(set(names)) != len(names):
        raise ValueError(f"VQFAST_SANITIZE must be a comma-separated subset of {SANITIZERS}, got {value!r}")
    fsan = "-fsanitize=" + ",".join(names)
    # -fno-wrapv comes after Python's -fwrapv, which would hide signed overflow from UBSan.
    cflags = [fsan, "-fno-omit-frame-pointer", "-g1", "-fno-wrapv"]
    if "undefined" in names:
        cflags.append("-fno-sanitize-recover=undefined")
    return cflags, [fsan]


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    include = [os.path.join(ROOT, "csrc", "include")]
    cxx = ["-O3", "-g0", "-fopenmp", "-DVQFAST_BUILD"]  # -g0: no debug info, faster builds
    if _flag("VQFAST_NATIVE", True):
        cxx.append("-march=native")
    san_cflags, san_ldflags = _sanitize_flags()
    exts = []
    if _flag("VQFAST_BUILD_CPU", True):
        exts.append(CppExtension(
            "vqfast._C",
            sorted(glob.glob("csrc/cpu/*.cpp")) + sorted(glob.glob("csrc/cpu/avx512/*.cpp")),
            include_dirs=include,
            depends=sorted(glob.glob("csrc/cpu/*.h") + glob.glob("csrc/include/vqfast/*.h")),
            extra_compile_args={"cxx": cxx + san_cflags},
            extra_link_args=["-fopenmp"] + san_ldflags,
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

    class Build(BuildExtension):
        """BuildExtension that compiles FP_EXACT_SOURCES with -ffp-contract=off."""

        def build_extension(self, ext):
            exact = [src for src in ext.sources if src in FP_EXACT_SOURCES]
            if exact:
                args = dict(ext.extra_compile_args)
                args["cxx"] = list(args["cxx"]) + ["-ffp-contract=off"]
                objects = self.compiler.compile(
                    exact, output_dir=self.build_temp, macros=ext.define_macros, include_dirs=ext.include_dirs,
                    debug=self.debug, extra_postargs=args, depends=ext.depends)
                ext.extra_objects = list(ext.extra_objects) + objects
                ext.sources = [src for src in ext.sources if src not in exact]
                ext.depends = list(ext.depends) + exact  # a changed one still relinks
            super().build_extension(ext)

    return Build.with_options(use_ninja=shutil.which("ninja") is not None)


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
        "train": ["torchmetrics", "tensorboard", "pillow"],
    },
)
