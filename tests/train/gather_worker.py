"""Run by torchrun from test_distributed.py: each of two ranks gathers several tensors of
rank-dependent lengths (one rank's or both ranks' empty in some cases) with `gather_cat`, then
int64 on rank 0 beside an empty float32 tensor on rank 1; saves what it held, what it got and the
error of the last gather to OUT_DIR/rank{r}.pt; also what `step_totals` (the per-step stop flag,
mean values and summed counts) and `all_reduce_sum_` (tensors packed per dtype) return there.

    torchrun --nproc_per_node 2 tests/train/gather_worker.py OUT_DIR
"""
import sys
from pathlib import Path

import torch

from vqfast.quantizers.distributed import all_reduce_sum_
from vqfast.train import distributed

# rows of rank 0 and rank 1 in each case
CASES = {"uneven": (3, 5), "second_empty": (4, 0), "first_empty": (0, 2), "both_empty": (0, 0)}


def held(rank: int, n: int) -> tuple[torch.Tensor, ...]:
    """This rank's [n] tensors, one of each dtype (int64, float32, float64, bool, bfloat16); the
    ranks draw different values."""
    g = torch.Generator().manual_seed(rank)
    return (torch.randint(1, 1000, (n,), generator=g), torch.randn(n, generator=g),
            torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g) > 0.5,
            torch.randn(n, generator=g).bfloat16())


def main(out: str) -> None:
    ctx = distributed.setup("cpu", 60)
    if ctx.world_size != 2:
        raise ValueError(f"run with two processes, got WORLD_SIZE={ctx.world_size}")
    mine = {case: held(ctx.rank, sizes[ctx.rank]) for case, sizes in CASES.items()}
    got = {case: distributed.gather_cat(*tensors, ctx=ctx) for case, tensors in mine.items()}
    try:
        distributed.gather_cat(torch.arange(2) if ctx.rank == 0 else torch.empty(0), ctx=ctx)
        error = ""
    except ValueError as e:
        error = str(e)
    r = ctx.rank
    totals = [distributed.step_totals(r == 1, {"loss": 1.5 + r, "rec": 0.25 * r}, (3 + r, 2 ** 40 + r), ctx),
              distributed.step_totals(False, {}, (r,), ctx)]
    packed = (torch.full((3,), float(r + 1)), torch.arange(6.0).view(2, 3) * (r + 1), torch.tensor([r + 1]),
              torch.ones(2, dtype=torch.float64) * (r + 1))
    all_reduce_sum_(*packed)
    torch.save({"held": mine, "got": got, "dtype_error": error, "totals": totals, "packed": packed},
               Path(out) / f"rank{ctx.rank}.pt")
    distributed.barrier(ctx)  # neither rank tears gloo down while the other still talks to it
    distributed.teardown(ctx)


if __name__ == "__main__":
    main(*sys.argv[1:])
