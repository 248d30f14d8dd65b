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
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return Context(rank, world, local, dev)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(values: dict[str, float], ctx: Context) -> dict[str, float]:
    """The mean of each value over ranks (the values themselves in one process)."""
    if not ctx.distributed or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return dict(zip(values, (t / ctx.world_size).tolist()))


def sum_over_ranks(value: int, ctx: Context) -> int:
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t)
    return int(t.item())


def any_rank(flag: bool, ctx: Context) -> bool:
    """True on every rank when the flag is set on any rank (e.g. a stop signal seen by one)."""
    return sum_over_ranks(int(flag), ctx) > 0


def gather(obj, ctx: Context) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()
