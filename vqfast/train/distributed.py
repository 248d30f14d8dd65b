"""The process group of a training run, from the environment `torchrun` sets.

Plain `python -m vqfast train ...` is one process (rank 0 of 1, no process group);
`torchrun --nproc_per_node N -m vqfast train ...` sets RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT, and every rank joins a gloo (CPU) or NCCL (CUDA) group.

    ctx = setup(device=None, timeout_s=600)
    ...
    teardown(ctx)
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """rank, world_size, local_rank and the device of this process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None, timeout_s: float = 600.0) -> Context:
    """Join the process group torchrun describes (if any). device None: this rank's GPU when
    CUDA is available (LOCAL_RANK), else the CPU. A rank that has not heard from the others
    within timeout_s raises instead of waiting forever."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device (--device) must name a torch device, got {device!r}: {err}") from None
    if dev.type == "cuda":
        dev = torch.device("cuda", local) if dev.index is None else dev  # "cuda": this rank's GPU
        if not torch.cuda.is_available() or dev.index >= torch.cuda.device_count():
            raise ValueError(f"device (--device) {device!r} is {dev} on this rank, but this machine has "
                             f"{torch.cuda.device_count()} usable CUDA devices")
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return Context(rank, world, local, dev)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def step_totals(stop: bool, values: dict[str, float], counts: tuple[int, ...],
                ctx: Context) -> tuple[bool, dict[str, float], tuple[int, ...]]:
    """One all-reduce per step: (whether any rank asks to stop, the mean of each of values over
    ranks, the sum of each count over ranks). In one process, the inputs. Counts are exact up
    to 2^53."""
    if not ctx.distributed:
        return stop, values, counts
    t = torch.tensor([float(stop), *counts, *values.values()], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    out = t.tolist()
    n = len(counts)
    return out[0] > 0, dict(zip(values, (v / ctx.world_size for v in out[1 + n:]))), tuple(int(c) for c in out[1:1 + n])


def gather(obj, ctx: Context) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_cat(*tensors: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, ...]:
    """Each tensor [n, ...] (n may differ by rank, 0 included) -> the ranks' tensors concatenated
    in rank order, on every rank (detached, CPU). The i-th tensor must have one dtype on every rank
    (an empty float tensor beside int64 ones would silently promote the result)."""
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{i}] must be a torch.Tensor [n, ...], got {type(t).__name__}")
        if t.dim() == 0:
            raise ValueError(f"tensors[{i}] must be a tensor [n, ...] with at least one dimension, got a 0-dim one")
    tensors = tuple(t.detach().cpu() for t in tensors)
    if not ctx.distributed:
        return tensors
    parts = gather(tensors, ctx)
    for r, p in enumerate(parts):  # every rank sees every rank's tensors: all raise together, none hangs
        if len(p) != len(parts[0]):
            raise ValueError(f"rank 0 gathers {len(parts[0])} tensors but rank {r} gathers {len(p)}")
        for i, (mine, theirs) in enumerate(zip(parts[0], p)):
            if mine.dtype != theirs.dtype:
                raise ValueError(f"tensors[{i}] is {mine.dtype} on rank 0 but {theirs.dtype} on rank {r}: "
                                 f"gather_cat needs one dtype on every rank")
    return tuple(torch.cat([p[i] for p in parts]) for i in range(len(tensors)))


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def shard(objective: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    """Shard the parameters over ranks with FSDP (torch.distributed.fsdp.fully_shard): each
    sub-module of the model that holds parameters becomes one unit, the rest goes with the root
    (the objective, whose forward is the training loss). Modifies and returns `objective`."""
    from torch.distributed.fsdp import fully_shard

    for child in objective.model.children():
        if any(True for _ in child.parameters()):
            fully_shard(child)
    fully_shard(objective)
    return objective


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(objective: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of an FSDP objective's model (complete on rank 0; every rank
    must call it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    state = get_model_state_dict(objective, options=_options())
    return {k.removeprefix("model."): v for k, v in state.items()}


def full_optimizer_state(objective: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The unsharded optimizer state (parameter names as keys; complete on rank 0)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(objective, optimizer, options=_options())


def load_full_optimizer_state(objective: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Shard a full optimizer state (as `full_optimizer_state` returned it) into optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(objective, optimizer, state, options=StateDictOptions(full_state_dict=True))
