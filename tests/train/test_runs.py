"""train_or_load (train, load, resume, replace a stale run), time_limit and model overrides of
the trainer."""
import json

import pytest
import torch

from vqfast.train import TrainConfig, load_model, train, train_or_load
from vqfast.train.checkpointing import latest
from vqfast.train.cli import parse_overrides
from vqfast.train.log import read_log
from vqfast.train.runs import run_status


def config(data, out, **kw):
    base = dict(data=str(data), preset="tiny", out=str(out), steps=3, batch_size=2, progress=False, holdout=0.2)
    return TrainConfig("maskgit", "tokenizer", **{**base, **kw})


def test_train_or_load_trains_once_then_loads(image_folder, tmp_path):
    cfg = config(image_folder, tmp_path / "r")
    assert run_status(cfg) == "none"
    run, trained = train_or_load(cfg)
    assert trained and run_status(cfg) == "finished"
    steps = [r["step"] for r in read_log(run)]
    assert steps == [1, 2, 3]
    again, trained = train_or_load(config(image_folder, tmp_path / "r", progress=True, workers=0))
    assert again == run and not trained
    assert [r["step"] for r in read_log(run)] == steps  # nothing trained the second time
    assert isinstance(load_model(run), torch.nn.Module) and not load_model(run).training


def test_a_damaged_run_json_is_a_value_error_and_nothing_is_deleted(image_folder, tmp_path):
    from vqfast.models.common.vqgan import VQGAN
    from vqfast.train.checkpointing import save

    run = tmp_path / "r"
    save(run, 1, VQGAN.from_preset("tiny"), {"step": 1})
    (run / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a run's config"):
        train_or_load(config(image_folder, run))
    assert latest(run) is not None


def test_train_or_load_replaces_a_stale_run_and_resumes_an_unfinished_one(image_folder, tmp_path):
    train(config(image_folder, tmp_path / "r", steps=4, stop_after=2))
    cfg = config(image_folder, tmp_path / "r", steps=4)
    assert run_status(cfg) == "unfinished"
    run, trained = train_or_load(cfg)
    assert trained and [r["kind"] for r in read_log(run, None)].count("resume") == 1
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4]
    other = config(image_folder, tmp_path / "r", steps=4, lr=3e-4)  # another recipe: trained from scratch
    assert run_status(other) == "none"
    train_or_load(other)
    assert json.loads((run / "run.json").read_text())["lr"] == 3e-4
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4]
    _, trained = train_or_load(other, retrain=True)
    assert trained and [r["step"] for r in read_log(run)] == [1, 2, 3, 4]


def test_time_limit_stops_and_counts_as_finished(image_folder, tmp_path):
    cfg = config(image_folder, tmp_path / "t", steps=50, time_limit=1e-6)
    run, trained = train_or_load(cfg)
    stops = read_log(run, "stopped")
    assert trained and stops == [{"kind": "stopped", "step": 1, "reason": "time"}]
    assert latest(run).name == "step_000001"
    assert run_status(cfg) == "finished"
    assert run_status(config(image_folder, tmp_path / "t", steps=50, time_limit=60.0)) == "finished"
    with pytest.raises(ValueError, match="time_limit"):
        config(image_folder, tmp_path / "x", time_limit=0)


def test_overrides_replace_preset_arguments(image_folder, tmp_path):
    run = train(config(image_folder, tmp_path / "o", steps=1, overrides={"codebook_size": 64, "ch_mult": [1, 2]}))
    vq = load_model(run)
    assert vq.codebook_size == 64 and list(vq.config["ch_mult"]) == [1, 2]
    with pytest.raises(TypeError, match="overrides"):
        config(image_folder, tmp_path / "x", overrides=[("codebook_size", 64)])
    with pytest.raises(ValueError, match="refit"):
        train(TrainConfig("vqddm", "refit", data=str(image_folder), preset="tiny", out=str(tmp_path / "f"), steps=1,
                          tokenizer=str(run), overrides={"codebook_size": 8}, progress=False, holdout=0.2))
    # two class folders, one class in the model: refused before a step is trained
    with pytest.raises(ValueError, match="has num_classes=1"):
        train(TrainConfig("maskgit", "model", data=str(image_folder), preset="tiny", out=str(tmp_path / "m"), steps=4,
                          tokenizer=str(run), overrides={"num_classes": 1}, progress=False, holdout=0.2))
    assert not (tmp_path / "m" / "log.jsonl").exists()


def test_cli_overrides_parse_json_values_else_strings():
    assert parse_overrides(["num_classes=13", "schedule=cosine", "ch_mult=[1, 2]"]) == {
        "num_classes": 13, "schedule": "cosine", "ch_mult": [1, 2]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["num_classes"])


def test_refit_stage_keeps_the_rebuilt_codebook():
    from vqfast.models.common.vqgan import VQGAN
    from vqfast.train import get_stage

    vq = VQGAN.from_preset("tiny")
    assert vq.quantizer.codebook_state.threshold_dead_code > 0  # the preset restarts dead codes
    params = get_stage("vqddm", "refit").trainable(vq)
    assert vq.quantizer.codebook_state.threshold_dead_code == 0.0  # VQ-DDM Sec. 3.2: k-means codes kept
    frozen = {id(p) for m in (vq.encoder, vq.quant_conv) for p in m.parameters()}
    assert params and not frozen & {id(p) for p in params}


def test_a_signal_stops_train_or_load_and_the_next_call_resumes(image_folder, tmp_path, monkeypatch):
    import os
    import signal

    from vqfast.train.log import RunLog

    step = RunLog.step

    def step_then_interrupt(self, *args, **kw):  # Ctrl-C while the first step is logged
        step(self, *args, **kw)
        os.kill(os.getpid(), signal.SIGINT)

    cfg = config(image_folder, tmp_path / "s", steps=4)
    monkeypatch.setattr(RunLog, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt, match="run again to resume"):
        train_or_load(cfg)
    monkeypatch.setattr(RunLog, "step", step)
    assert run_status(cfg) == "unfinished"
    run, trained = train_or_load(cfg)
    assert trained and [r["step"] for r in read_log(run)] == [1, 2, 3, 4]
    assert [r["kind"] for r in read_log(run, None)].count("resume") == 1
