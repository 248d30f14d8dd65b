"""The eager fast path shared by the ops: an eager call on the "cpu" backend runs the
registered C++ kernel directly, skipping the custom-op layer (its dispatch, alias and
autograd checks cost 15-100 us, 5-10% of a small call); a call traced by torch.compile,
or one that needs autograd, goes through the custom op so the graph sees it."""
from __future__ import annotations

from typing import Callable

import torch


def run(op: Callable, cpu_kernel: str | Callable, args: tuple, backend: str, *, needs_autograd: bool = False):
    """op(*args, backend), or the cpu kernel on args for an eager cpu call without autograd.

    cpu_kernel: the name of a torch.ops.vqfast_cpu op, or a function that calls one.
    """
    if backend == "cpu" and not needs_autograd and not torch.compiler.is_compiling():
        kernel = getattr(torch.ops.vqfast_cpu, cpu_kernel) if isinstance(cpu_kernel, str) else cpu_kernel
        return kernel(*args)
    return op(*args, backend)
