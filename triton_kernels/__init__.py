"""Triton kernels of vqfast (installed as vqfast.triton_kernels).

They run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (tests, CI).
Import the op modules lazily (`from vqfast.triton_kernels.nearest_code import ...`):
importing them needs triton.
"""
