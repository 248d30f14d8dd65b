"""Checkpoints that cannot run code: safetensors weights + a JSON config.

`save(model, path)` writes `<path>.safetensors` (the state dict) and `<path>.json`
({"class": "vqfast.models.x.Y", "config": {...constructor kwargs...},
"vqfast_version": ..., "extra": {...}}). The config is `model.config` (a dict of JSON
values every vqfast model keeps) unless given. `load(path)` rebuilds the class from
the JSON, which may only name a class inside the `vqfast` package, and fills it from
the safetensors file: nothing is unpickled. A checkpoint of the wrong model class or
with missing, unexpected or differently shaped tensors fails with a ValueError that
names the mismatch.

    vqfast.checkpoint.save(vqgan, "runs/tokenizer")
    vqgan = vqfast.checkpoint.load("runs/tokenizer", expected=VQGAN)
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from torch import nn

import vqfast

_ALLOWED_PREFIX = "vqfast."

# Classes saved before the models moved into one package per family (the demo's cache keeps
# such checkpoints): old module path -> today's.
_MOVED = {
    "vqfast.models.transformer.BidirectionalTransformer": "vqfast.models.maskgit.transformer.BidirectionalTransformer",
    "vqfast.models.vqgan.VQGAN": "vqfast.models.common.vqgan.VQGAN",
    "vqfast.models.put_vqvae.PVQVAE": "vqfast.models.put.tokenizer.PVQVAE",
    "vqfast.models.put_transformer.UQTransformer": "vqfast.models.put.transformer.UQTransformer",
    "vqfast.models.mqvae.MQVAE": "vqfast.models.mqvae.tokenizer.MQVAE",
    "vqfast.models.stackformer.Stackformer": "vqfast.models.mqvae.stackformer.Stackformer",
    "vqfast.models.rqvae.RQVAE": "vqfast.models.rq.tokenizer.RQVAE",
    "vqfast.models.rq_transformer.ContextualRQTransformer": "vqfast.models.rq.transformer.ContextualRQTransformer",
    "vqfast.models.vqddm.VQDDM": "vqfast.models.vqddm.denoiser.VQDDM",
}


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def save(model: nn.Module, path, *, config: dict | None = None, extra: dict | None = None) -> tuple[Path, Path]:
    """Write model's weights and config (a torch.compile / DDP wrapper saves the model inside);
    returns (weights path, config path)."""
    from safetensors.torch import save_file

    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    config = getattr(model, "config", None) if config is None else config
    if not isinstance(config, dict):
        raise TypeError(f"{type(model).__name__} has no `config` dict of constructor arguments: pass config=")
    if not type(model).__module__.startswith(_ALLOWED_PREFIX):
        raise TypeError(f"only models defined in vqfast can be saved (load rebuilds them by class), got "
                        f"{_class_name(type(model))}")
    record = {"class": _class_name(type(model)), "config": config, "vqfast_version": vqfast.__version__,
              "extra": extra or {}}
    try:  # before any file is written: a config that is not JSON leaves nothing behind
        text = json.dumps(record, indent=2, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"config and extra must hold JSON values only: {err}") from None
    weights, meta = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
             if isinstance(v, torch.Tensor)}
    save_file(state, str(weights))
    meta.write_text(text)
    return weights, meta


def read_config(path) -> dict:
    """The JSON record of a checkpoint (class, config, vqfast_version, extra)."""
    _, meta = _paths(path)
    if not meta.exists():
        raise FileNotFoundError(f"no checkpoint config at {meta}")
    try:
        record = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta} is not a vqfast checkpoint config: {err}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{meta} is not a vqfast checkpoint config: expected a JSON object")
    for key in ("class", "config"):
        if key not in record:
            raise ValueError(f"{meta} is not a vqfast checkpoint config: no {key!r} field")
    if not isinstance(record["class"], str):
        raise ValueError(f"{meta}: 'class' must be a dotted class name string, got {record['class']!r}")
    record["class"] = _MOVED.get(record["class"], record["class"])
    return record


def _resolve_class(name: str) -> type:
    if not name.startswith(_ALLOWED_PREFIX):
        raise ValueError(f"checkpoint names class {name!r}; only classes inside the vqfast package are loaded")
    module, _, qual = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), qual, None)
    except ImportError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__.startswith(_ALLOWED_PREFIX)):
        raise ValueError(f"checkpoint class {name!r} is not an nn.Module in vqfast")
    return cls


def _current_config(cls: type, config: dict) -> dict:
    """Constructor kwargs under today's names: a class lists renamed ones in `CONFIG_ALIASES`
    (old name -> new name)."""
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint config must be a JSON object, got {type(config).__name__}")
    aliases = getattr(cls, "CONFIG_ALIASES", {})
    return {aliases.get(k, k): v for k, v in config.items()}


def _read_weights(path) -> tuple[Path, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    weights, _ = _paths(path)
    if not weights.exists():
        raise FileNotFoundError(f"no checkpoint weights at {weights}")
    try:
        return weights, load_file(str(weights))
    except Exception as err:  # safetensors raises its own SafetensorError on a truncated or corrupt file
        raise ValueError(f"checkpoint weights {weights} are not a readable safetensors file: {err}") from None


def load_state(model: nn.Module, path, *, strict: bool = True) -> nn.Module:
    """Fill an existing model from a checkpoint's weights; shape/key mismatches raise ValueError."""
    return _fill(model, *_read_weights(path), strict)


def _fill(model: nn.Module, weights: Path, state: dict[str, torch.Tensor], strict: bool) -> nn.Module:
    own = model.state_dict()
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and isinstance(v, torch.Tensor) and state[k].shape != v.shape]
    dtypes = [f"{k}: checkpoint {state[k].dtype} vs model {v.dtype}" for k, v in own.items()
              if k in state and isinstance(v, torch.Tensor) and state[k].is_floating_point() != v.is_floating_point()]
    missing = [k for k, v in own.items() if isinstance(v, torch.Tensor) and k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
    if dtypes:
        problems.append("dtype mismatch: " + "; ".join(dtypes[:5]) + (" ..." if len(dtypes) > 5 else ""))
    if strict and missing:
        problems.append(f"missing from checkpoint: {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    if strict and unexpected:
        problems.append(f"not in {type(model).__name__}: {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else ""))
    if problems:
        raise ValueError(f"checkpoint {weights} does not fit {type(model).__name__}: " + " | ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return model


def load(path, *, expected: type | None = None, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (never unpickles).

    expected: the class the caller needs; a checkpoint of another class raises ValueError.
    """
    if expected is not None and not isinstance(expected, type):
        raise TypeError(f"expected must be a model class (e.g. VQGAN), got {expected!r}")
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"map_location must name a torch device, got {map_location!r}: {err}") from None
    record = read_config(path)
    if expected is not None and record["class"] != _class_name(expected):
        raise ValueError(f"checkpoint {path} holds a {record['class']}, expected {_class_name(expected)}")
    cls = _resolve_class(record["class"])
    model = cls(**_current_config(cls, record["config"]))
    weights, state = _read_weights(path)
    saved = {state[k].dtype for k, _ in model.named_parameters() if k in state and state[k].is_floating_point()}
    if len(saved) == 1:  # a model saved in bf16 / fp16 comes back in it (fp32 buffers stay as the model keeps them)
        model.to(saved.pop())
    return _fill(model, weights, state, True).to(device).eval()
