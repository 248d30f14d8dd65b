"""`from_preset`: every configurable model class builds its named sizes the same way."""
from __future__ import annotations

from contextlib import nullcontext

import torch


class PresetMixin:
    """Adds `from_preset(name, *, device=None, dtype=None, **overrides)` to a class with a
    `PRESETS` dict of constructor keyword arguments (`"tiny"` plus the paper's names).

        net = UQTransformer.from_preset("ffhq", device="meta")     # no memory allocated
    """

    PRESETS: dict[str, dict] = {}

    @classmethod
    def from_preset(cls, name: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                    **overrides):
        if not isinstance(name, str) or name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        with torch.device(device) if device is not None else nullcontext():
            model = cls(**{**cls.PRESETS[name], **overrides})
        return model.to(dtype) if dtype is not None else model
