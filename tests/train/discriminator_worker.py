"""Run by torchrun from test_distributed.py: two steps of an RQ-VAE tokenizer with the
discriminator on from step 0 and two micro-batches per step; exits 0 when every rank ends with
the same discriminator weights (its gradients were reduced over ranks), 1 otherwise.

    torchrun --nproc_per_node 2 tests/train/discriminator_worker.py IMAGE_FOLDER RUN_DIR
"""
import contextlib
import sys

import torch
import torch.distributed as dist

from vqfast.train import TrainConfig, distributed
from vqfast.train.data import BatchPlan
from vqfast.train.trainer import Trainer


def main(folder: str, out: str) -> int:
    ctx = distributed.setup("cpu", 60)
    cfg = TrainConfig("rq", "tokenizer", data=folder, preset="tiny", out=out, steps=2, batch_size=1,
                      grad_accum=2, disc_start=0, progress=False, holdout=0.2)
    trainer = Trainer(cfg, ctx)
    it = trainer._batches(BatchPlan(len(trainer.data), 1, world_size=ctx.world_size, seed=0), 0, 4)
    for step in range(2):
        trainer.step = step
        trainer.train_step(it, contextlib.nullcontext())
    mine = torch.cat([p.detach().flatten() for p in trainer.critic.discriminator.parameters()])
    every = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(every, mine)
    same = all(torch.equal(every[0], w) for w in every)
    distributed.teardown(ctx)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
