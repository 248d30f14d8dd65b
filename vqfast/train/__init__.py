"""Training on the user's images: one trainer for every family and stage (`python -m vqfast train`).

    from vqfast.train import TrainConfig, train
    train(TrainConfig("maskgit", "tokenizer", data="path/to/images", preset="tiny", out="runs/vq", steps=1000))
"""
from vqfast.train.families import FAMILIES, STAGES, get_stage
from vqfast.train.runs import load_model, train_or_load
from vqfast.train.trainer import TrainConfig, train

__all__ = ["FAMILIES", "STAGES", "TrainConfig", "get_stage", "load_model", "train", "train_or_load"]
