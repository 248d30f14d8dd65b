"""Triton kernels for CUDA tensors (run on CPU tensors under TRITON_INTERPRET=1); installed as vqfast.triton_kernels."""
