"""Run by torchrun from test_distributed.py: VQ-DDM's model stage (tiny preset with T timesteps,
2-image batches per rank) for STEPS steps, then a checkpoint (rank 0 writes it); every rank saves
its timestep sampler's state after each step to OUT_DIR/rank{r}.pt.

    torchrun --nproc_per_node 2 tests/train/sampler_worker.py IMAGE_FOLDER TOKENIZER RUN_DIR OUT_DIR STEPS T
"""
import contextlib
import sys
from pathlib import Path

import torch

from vqfast.train import TrainConfig, distributed
from vqfast.train.data import BatchPlan
from vqfast.train.trainer import Trainer


def main(folder: str, tokenizer: str, run: str, out: str, steps: str, T: str) -> None:
    ctx = distributed.setup("cpu", 60)
    cfg = TrainConfig("vqddm", "model", data=folder, preset="tiny", out=run, steps=int(steps), batch_size=2,
                      progress=False, holdout=0.2, tokenizer=tokenizer, overrides={"T": int(T)})
    trainer = Trainer(cfg, ctx)
    plan = BatchPlan(len(trainer.data), cfg.batch_size, world_size=ctx.world_size, seed=cfg.seed)
    it = trainer._batches(plan, 0, cfg.steps)
    states = []
    for step in range(cfg.steps):
        trainer.step = step
        trainer.train_step(it, contextlib.nullcontext())
        states.append(trainer.sampler.state_dict())
    trainer.step = cfg.steps
    trainer.save()  # collective; rank 0 writes
    torch.save(states, Path(out) / f"rank{ctx.rank}.pt")
    distributed.barrier(ctx)
    distributed.teardown(ctx)


if __name__ == "__main__":
    main(*sys.argv[1:])
