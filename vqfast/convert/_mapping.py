"""Filling a vqfast model from a foreign state dict through a key map, with every mismatch named."""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn

# vqfast key -> the foreign key, or a function of the foreign state giving the tensor (and the keys it used)
Source = str | tuple[Callable[[dict], torch.Tensor], tuple[str, ...]]


class Conversion(NamedTuple):
    """What a converter did: the model, how many tensors it mapped, the foreign keys it skipped on purpose."""

    model: nn.Module
    mapped: int
    skipped: list[str]


def matrix_shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, int]:
    """(rows, cols) of the 2-D tensor state[key] (an embedding or Linear weight); ValueError naming it otherwise."""
    if state[key].dim() != 2:
        raise ValueError(f"{key} must be a 2-D [rows, dim] tensor, got shape {tuple(state[key].shape)}")
    return tuple(state[key].shape)


def concat(*keys: str, dim: int = 0) -> Source:
    """A vqfast tensor that is the foreign tensors `keys` concatenated (e.g. q, k, v -> qkv)."""
    return (lambda s: torch.cat([s[k] for k in keys], dim)), keys


def load_mapped(model: nn.Module, state: dict[str, torch.Tensor], mapping: dict[str, Source], *,
                ignore: tuple[str, ...] = (), source: str = "checkpoint") -> Conversion:
    """Copy state into model through mapping; missing, unused and misshapen keys raise one ValueError
    listing them (keys starting with an `ignore` prefix are skipped on purpose, e.g. a GAN loss)."""
    own = model.state_dict()
    problems, new, used = [], {}, set()
    for key, src in mapping.items():
        keys = (src,) if isinstance(src, str) else src[1]
        absent = [k for k in keys if k not in state]
        if absent:
            problems.append(f"missing {absent} (for {key})")
            continue
        used.update(keys)
        value = state[src] if isinstance(src, str) else src[0](state)
        if key not in own:
            problems.append(f"vqfast model has no {key}")
        elif tuple(value.shape) != tuple(own[key].shape):
            problems.append(f"shape of {keys[0]} {tuple(value.shape)} != {key} {tuple(own[key].shape)}")
        elif value.is_floating_point() != own[key].is_floating_point():
            problems.append(f"dtype of {keys[0]} {value.dtype} != {key} {own[key].dtype}")
        else:
            new[key] = value.to(own[key].dtype)
    unmapped = [k for k, v in own.items() if k not in mapping and k not in new]
    skipped = sorted(k for k in state if k not in used and k.startswith(ignore))
    unknown = sorted(k for k in state if k not in used and not k.startswith(ignore))
    if unknown:
        problems.append(f"unknown keys {unknown[:8]}" + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    if unmapped:
        problems.append(f"no source for {unmapped[:8]}" + (f" (+{len(unmapped) - 8} more)" if len(unmapped) > 8 else ""))
    if problems:
        raise ValueError(f"{source} does not convert to {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(new, strict=True)
    return Conversion(model, len(new), skipped)
