"""Every training script in examples/ trains its family's stages through the library trainer
at smoke size (a few steps of each stage, tiny configs on the bundled photos) and writes its
run folders, figures and metrics."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

from vqfast.train.log import read_log

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# script -> (smoke-size arguments, files it must write, {run folder: (family, stage, steps)})
RUNS = {
    "train_put": (["--vae-steps", "2", "--tf-steps", "3", "--batch", "2", "--samples", "2", "--grid-rows", "2",
                   "--top-k", "5"],
                  ["losses.png", "reconstructions.png", "inpainting.png", "metrics.json"],
                  {"pvqvae": ("put", "tokenizer", 2), "uq_transformer": ("put", "model", 3)}),
    "train_maskgit": (["--tokenizer-steps", "2", "--transformer-steps", "3", "--batch", "4", "--steps", "2"],
                      ["losses.png", "samples.png"],
                      {"tokenizer": ("maskgit", "tokenizer", 2), "transformer": ("maskgit", "model", 3)}),
    "train_rq": (["--vae-steps", "2", "--tf-steps", "3", "--batch", "4", "--samples", "1", "--grid-rows", "2",
                  "--t-draft", "2", "--t-revise", "1", "--m", "1"],
                 ["losses.png", "reconstructions.png", "samples.png", "inpainting.png", "editing.png", "metrics.json"],
                 {"rqvae": ("rq", "tokenizer", 2), "rq_transformer": ("rq", "model", 3)}),
    "train_vqddm": (["--tokenizer-steps", "2", "--finetune-steps", "1", "--ddm-steps", "3", "--batch", "4",
                     "--T", "50", "--sample-strides", "5", "--inpaint-steps", "5"],
                    ["losses.png", "samples.png", "inpainting.png", "report.json"],
                    {"tokenizer": ("vqddm", "tokenizer", 2), "refit": ("vqddm", "refit", 1),
                     "vqddm": ("vqddm", "model", 3)}),
    "train_mqvae": (["--steps", "3", "--batch", "4", "--samples", "1", "--grid-rows", "2", "--eval-crops", "16"],
                    ["losses.png", "importance.png", "reconstructions.png", "samples.png", "continuation.png",
                     "metrics.json"],
                    {"mqvae": ("mqvae", "tokenizer", 3), "stackformer": ("mqvae", "model", 3)}),
}


def _run(name: str, out: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(out), *RUNS[name][0]])


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_trains_through_the_trainer_and_writes_its_outputs(name, tmp_path):
    _run(name, tmp_path)
    args, files, runs = RUNS[name]
    for f in files:
        assert (tmp_path / f).stat().st_size > 0, f
    for folder, (family, stage, steps) in runs.items():
        config = json.loads((tmp_path / folder / "run.json").read_text())
        assert (config["family"], config["stage"], config["steps"]) == (family, stage, steps), folder
        log = read_log(tmp_path / folder)
        assert [r["step"] for r in log] == list(range(1, steps + 1)), folder
        assert all(math.isfinite(r["loss"]) for r in log), folder
        assert (tmp_path / folder / "latest").read_text().strip() == f"checkpoints/step_{steps:06d}"
    for f in tmp_path.glob("*.json"):
        json.loads(f.read_text())  # every JSON it writes parses
    if name == "train_maskgit":
        model = json.loads((tmp_path / "transformer" / "run.json").read_text())
        assert model["tokenizer"] == str(tmp_path / "tokenizer") and model["overrides"] == {"schedule": "cosine"}
    if name == "train_mqvae":
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["kept"] == 32 and metrics["positions"] == 64
        assert metrics["stackformer_code_ce"] > 0 and metrics["stackformer_position_ce"] > 0
        # conditioned on the 13 bundled photos (the tiny preset is unconditional)
        assert json.loads((tmp_path / "stackformer" / "run.json").read_text())["overrides"] == {"num_classes": 13}
    if name == "train_vqddm":
        report = json.loads((tmp_path / "report.json").read_text())
        assert 0 < report["refit"]["usage_before"] <= 1 and 0 < report["refit"]["usage_after"] <= 1
        assert json.loads((tmp_path / "refit" / "run.json").read_text())["tokenizer"] == str(tmp_path / "tokenizer")
        assert json.loads((tmp_path / "vqddm" / "run.json").read_text())["tokenizer"] == str(tmp_path / "refit")
