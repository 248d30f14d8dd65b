"""Reading the official checkpoints without running their code.

`read_state(path)` returns a flat {name: tensor} from a Lightning `.ckpt`, a `.pt` / `.pth` / `.bin`
(`torch.load(weights_only=True)`), a `.safetensors` file, or a `.tar.gz` release (the member
`--member` names, or the only checkpoint inside, read in place). torch's weights-only unpickler
refuses every class outside plain containers and tensors; the only others let through are the
data-only records a Lightning checkpoint carries beside the weights (callback states keyed by
their class, numpy scalars of monitored metrics), each read as an inert stand-in. Anything else
is a ValueError naming it: nothing from the file is executed.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import torch

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


class _Inert:
    """Stand-in for an allowed class name: keeps whatever state the file gives it."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


# Data-only records of Lightning checkpoints (the callbacks dict is keyed by class objects).
_ALLOWED_PREFIXES = ("pytorch_lightning.callbacks.", "lightning.pytorch.callbacks.", "numpy.core.multiarray.scalar",
                     "numpy._core.multiarray.scalar", "numpy.dtype", "numpy.dtypes.")


def _torch_load(source) -> dict:
    """torch.load(weights_only=True) with the allowed Lightning / numpy names read as inert objects."""
    data = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception as err:  # not a torch.save zip archive (a legacy pickle, a text file, a damaged zip)
        raise ValueError(f"not a checkpoint written by torch.save (a zip archive): {err}") from None
    refused = [n for n in names if not n.startswith(_ALLOWED_PREFIXES)]
    if refused:
        raise ValueError(f"checkpoint names classes outside the allow-list, not loaded: {sorted(refused)}")
    with torch.serialization.safe_globals([(_Inert, n) for n in names]):
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # the unpickler's own error types vary by torch version
            raise ValueError(f"cannot read the checkpoint weights-only: {err}") from None


def _flat_state(obj, source: str) -> dict[str, torch.Tensor]:
    """The weights of a loaded checkpoint: its "state_dict" / "model" entry or the dict itself."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{source} holds no state dict of tensors")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{source} holds no tensors")
    return state


def _safetensors(data: bytes | Path, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (a path, read mapped) or of its bytes."""
    from safetensors.torch import load, load_file

    try:
        return load_file(str(data)) if isinstance(data, Path) else load(data)
    except Exception as err:  # safetensors raises its own SafetensorError on a truncated or corrupt file
        raise ValueError(f"{source} is not a readable safetensors file: {err}") from None


def read_state(path, member: str | None = None) -> dict[str, torch.Tensor]:
    """{name: tensor} of an official checkpoint file (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        try:
            with tarfile.open(path) as tar:
                files = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(CHECKPOINT_SUFFIXES)]
                if member is not None:
                    files = [m for m in files if m.name == member or m.name.endswith("/" + member)]
                if len(files) != 1:
                    raise ValueError(f"{path}: name one checkpoint inside with member= (found "
                                     f"{[m.name for m in files] or 'none'})")
                data = tar.extractfile(files[0]).read()
        except (tarfile.TarError, EOFError, OSError) as err:  # OSError: a damaged gzip stream
            raise ValueError(f"{path} is not a readable tar archive: {err}") from None
        source = f"{path}:{files[0].name}"
        if files[0].name.endswith(".safetensors"):
            return _safetensors(data, source)
        return _flat_state(_torch_load(io.BytesIO(data)), source)
    if path.suffix == ".safetensors":
        return _safetensors(path, str(path))
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"{path}: expected one of {CHECKPOINT_SUFFIXES} or a .tar.gz release")
    return _flat_state(_torch_load(path), str(path))
