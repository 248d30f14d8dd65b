"""Train a stage unless its run folder already holds it: what the demo's cache and the
examples' "load what is trained" need on top of `train`.

    run, trained = train_or_load(TrainConfig("maskgit", "tokenizer", data="photos", preset="tiny",
                                             out="runs/vq", steps=600))
    vq = load_model(run)                   # the run's latest weights (EMA weights when kept)
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from torch import nn

from vqfast.train import checkpointing
from vqfast.train.log import read_log
from vqfast.train.trainer import TrainConfig, train

# Options that change where or how a run executes, not what it learns.
_NOT_RECIPE = ("resume", "progress", "workers", "log_every", "dist_timeout", "stop_after", "time_limit", "device",
               "eval_every", "save_every")


def _recipe(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _NOT_RECIPE}


def run_status(cfg: TrainConfig) -> str:
    """What cfg.out holds for cfg's recipe: "finished" (trained to cfg.steps, or stopped by
    its time limit), "unfinished" (a checkpoint to resume from), or "none" (no run of this
    recipe: no run at all, or one trained with other settings)."""
    run = Path(cfg.out)
    latest = checkpointing.latest(run) if (run / "run.json").exists() else None
    if latest is None:
        return "none"
    try:
        saved = json.loads((run / "run.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{run / 'run.json'} is not a run's config ({err}): delete the folder or pick another "
                         f"out") from None
    if not isinstance(saved, dict) or _recipe(saved) != _recipe(json.loads(json.dumps(asdict(cfg)))):
        return "none"
    step = int(latest.name.rsplit("_", 1)[1])  # checkpointing.save names the folder step_NNNNNN
    stops = read_log(run, "stopped")
    if step >= cfg.steps or (stops and stops[-1]["reason"] == "time" and stops[-1]["step"] == step):
        return "finished"
    return "unfinished"


def train_or_load(cfg: TrainConfig, *, retrain: bool = False) -> tuple[Path, bool]:
    """Train cfg's run unless cfg.out already holds it finished; resume it when unfinished.
    A run folder of another recipe (or any, with retrain=True) is deleted first. Returns
    (run folder, whether anything was trained now). Raises KeyboardInterrupt when a signal
    stopped the run (its checkpoint stays: the next call resumes it)."""
    status = "none" if retrain else run_status(cfg)
    if status == "finished":
        return Path(cfg.out), False
    run = Path(cfg.out)
    if status == "none" and (run / "run.json").exists():  # a run of another recipe, or one that never saved
        shutil.rmtree(run)
    elif status == "none" and (run / checkpointing.LATEST).exists():
        raise ValueError(f"{run} holds checkpoints but no run.json: not a run folder this can replace")
    run = train(TrainConfig(**{**asdict(cfg), "resume": status == "unfinished"}))
    stops = read_log(run, "stopped")
    if stops and stops[-1]["reason"] == "signal" and run_status(cfg) == "unfinished":
        raise KeyboardInterrupt(f"{run} stopped by a signal at step {stops[-1]['step']}: run again to resume it")
    return run, True


def load_model(run_dir: str | Path, map_location="cpu") -> nn.Module:
    """The trained model of a run folder (its latest checkpoint; the EMA weights when kept), in eval mode."""
    from vqfast import checkpoint

    return checkpoint.load(checkpointing.model_path(run_dir), map_location=map_location).eval()
