"""What every training loop of examples/ repeats: setting up a run, one optimizer step.

    g, out = start_run("runs/x", seed=0, threads=2)
    optimizer_step(loss, opt, clip=1.0, scheduler=sched)
"""
from __future__ import annotations

from pathlib import Path

import torch


def start_run(out: str | Path, seed: int, threads: int | None = None) -> tuple[torch.Generator, Path]:
    """Seeds torch, sets the intra-op threads (None or 0: torch's default) and makes the output
    folder. Returns (a CPU generator seeded with `seed`, the folder)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return torch.Generator().manual_seed(seed), out


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, *, clip: float | None = None,
                   scheduler=None) -> None:
    """zero_grad, backward, the gradient norm of the optimizer's parameters clipped to `clip`
    (None: no clipping), step, then scheduler.step() when a scheduler is given."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], clip)
    opt.step()
    if scheduler is not None:
        scheduler.step()
