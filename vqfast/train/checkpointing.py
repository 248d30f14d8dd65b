"""Training checkpoints written atomically, and read back for `--resume`.

Layout of a run folder:

    RUN_DIR/latest                          # text: "checkpoints/step_000500" (replaced atomically)
    RUN_DIR/checkpoints/step_000500/
        model.safetensors, model.json       # vqfast.checkpoint format: vqfast.checkpoint.load() reads it
        ema.safetensors, ema.json           # the EMA weights, when training keeps them
        state.safetensors, state.json       # optimizer, scheduler, RNG states of every rank, step, data position

A checkpoint is written into a temporary folder beside its final name, flushed to disk,
renamed, and only then named in `latest`: a crash mid-save leaves the previous checkpoint
as the latest. Nothing is pickled: tensors go to safetensors, everything else to JSON.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from vqfast import checkpoint

LATEST = "latest"
FOLDER = "checkpoints"


def flatten(obj, prefix: str = "", tensors: dict | None = None):
    """Nested dicts / lists / tuples of tensors and JSON values -> (JSON-able structure with
    {"__tensor__": key} placeholders, {key: tensor}). Dict keys keep their int / str type."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        key = prefix or "tensor"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}, tensors
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"state dict keys must be str or int, got {k!r} under {prefix!r}")
            items.append([k, flatten(v, f"{prefix}/{k}", tensors)[0]])
        return {"__dict__": items}, tensors
    if isinstance(obj, (list, tuple)):
        return [flatten(v, f"{prefix}/{i}", tensors)[0] for i, v in enumerate(obj)], tensors
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj, tensors
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {prefix!r})")


def unflatten(structure, tensors: dict):
    """The inverse of `flatten`."""
    if isinstance(structure, dict):
        if "__tensor__" in structure:
            if structure["__tensor__"] not in tensors:
                raise ValueError(f"the structure names tensor {structure['__tensor__']!r}, which is not stored")
            return tensors[structure["__tensor__"]]
        if not isinstance(structure.get("__dict__"), list):
            raise ValueError(f"a stored dict must be {{'__dict__': [[key, value], ...]}}, got keys {sorted(structure)}")
        return {k: unflatten(v, tensors) for k, v in structure["__dict__"]}
    if isinstance(structure, list):
        return [unflatten(v, tensors) for v in structure]
    return structure


def module_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """Every torch.Generator held as a module attribute (e.g. a codebook's dead-code generator),
    by "module.path:attribute"; their states belong to a resumable run."""
    out = {}
    for path, mod in model.named_modules():
        for attr, value in vars(mod).items():
            if isinstance(value, torch.Generator):
                out[f"{path}:{attr}"] = value
    return out


def rng_state(model: nn.Module) -> dict:
    """This process's random state: torch's CPU (and CUDA) generators and the model's own."""
    state = {"torch": torch.get_rng_state(),
             "modules": {k: g.get_state() for k, g in module_generators(model).items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(model: nn.Module, state: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    gens = module_generators(model)
    for k, s in state["modules"].items():
        if k not in gens:
            raise ValueError(f"checkpoint holds the state of generator {k!r}, which the model does not have")
        gens[k].set_state(s)


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(run_dir: str | Path, step: int, model: nn.Module, state: dict, *, ema: dict | None = None,
         model_state: dict | None = None, keep: int = 2) -> Path:
    """Write checkpoint `step` of a run atomically and point `latest` at it; keeps the newest
    `keep` checkpoints. model_state: the full state dict when the model's own is sharded.
    Returns the checkpoint folder."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    final = run_dir / FOLDER / f"step_{step:06d}"
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_weights(model, tmp / "model", model_state)
    if ema is not None:
        _save_weights(model, tmp / "ema", ema)
    structure, tensors = flatten(state)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(structure))
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(run_dir / LATEST, f"{FOLDER}/{final.name}\n")
    for old in sorted((run_dir / FOLDER).glob("step_*"))[:-keep]:
        shutil.rmtree(old)
    return final


def _save_weights(model: nn.Module, path: Path, state: dict | None) -> None:
    if state is None:
        checkpoint.save(model, path)
        return
    from safetensors.torch import save_file
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(path) + ".safetensors")
    record = {"class": f"{type(model).__module__}.{type(model).__qualname__}", "config": model.config,
              "extra": {}}
    Path(str(path) + ".json").write_text(json.dumps(record, indent=2, sort_keys=True))


def latest(run_dir: str | Path) -> Path | None:
    """The folder `latest` names, or None when the run has no checkpoint yet."""
    pointer = Path(run_dir) / LATEST
    if not pointer.exists():
        return None
    folder = Path(run_dir) / pointer.read_text().strip()
    if not (folder / "state.json").exists():
        raise ValueError(f"{pointer} names {folder}, which is not a complete checkpoint")
    return folder


def load_state(folder: str | Path) -> dict:
    """The training state (everything but the weights) of a checkpoint folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        structure = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "state.safetensors"))
        return unflatten(structure, tensors)
    except Exception as err:  # OSError, bad JSON, safetensors' own SafetensorError on a damaged file
        raise ValueError(f"{folder} is not a readable training checkpoint: {err}") from None


def saved_run(folder: str | Path) -> tuple[dict, int]:
    """(the TrainConfig fields as saved, step) of a checkpoint folder, without reading its tensors."""
    folder = Path(folder)
    try:
        structure = dict(json.loads((folder / "state.json").read_text())["__dict__"])
        return unflatten(structure["config"], {}), int(structure["step"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{folder} is not a readable training checkpoint: {err!r}") from None


def read_weights(folder: str | Path, name: str = "model") -> dict[str, torch.Tensor]:
    """The state dict `name` ("model" or "ema") of a checkpoint folder."""
    from safetensors.torch import load_file

    path = Path(folder) / f"{name}.safetensors"
    if not path.is_file():
        raise ValueError(f"{Path(folder)} holds no {name} weights ({path.name})")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError on a truncated or corrupt file
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None


def model_path(source: str | Path) -> Path:
    """A run folder, a checkpoint folder or a vqfast checkpoint path -> the path
    `vqfast.checkpoint.load` takes (a run's latest checkpoint; its EMA weights when kept)."""
    source = Path(source)
    if source.is_dir():
        folder = latest(source) if (source / LATEST).exists() else source
        if folder is None or not (folder / "model.json").exists():
            raise ValueError(f"{source} is neither a training run with a checkpoint nor a checkpoint folder")
        return folder / ("ema" if (folder / "ema.json").exists() else "model")
    return source
