"""The seed convention of vqfast.data, vqfast.samplers and the examples.

Every random function takes `generator`: a `torch.Generator` (used and advanced), an
int seed (a fresh CPU generator seeded with it: same seed + same arguments -> same
output on every machine), or None (torch's global generator).
"""
from __future__ import annotations

import torch


def as_generator(generator: torch.Generator | int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A torch.Generator from a generator, an int seed, or None (None: global RNG)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    return torch.Generator(device=device).manual_seed(generator)
