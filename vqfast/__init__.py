"""vqfast: fused kernels for vector-quantized image generation.

Every op in `vqfast.ops` has a pure-PyTorch reference (`vqfast.reference`), a C++ CPU
kernel, a Triton kernel and, where it pays, a CUDA kernel; `backends()` tells which
are built here.
"""
from vqfast._backend import BackendUnavailableError, backends
from vqfast import ops, reference
from vqfast import quantizers
from vqfast.quantizers.clustering import kmeans

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "backends", "kmeans", "ops", "quantizers", "reference", "__version__"]
