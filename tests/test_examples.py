"""Every training script in examples/ runs end to end at smoke size (a few steps of each
stage, tiny configs on the bundled photos) and writes its checkpoints, figures and metrics."""
import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# script -> (smoke-size arguments, files it must write)
RUNS = {
    "train_put": (["--vae-steps", "2", "--tf-steps", "2", "--batch", "2", "--samples", "2", "--grid-rows", "2",
                   "--top-k", "5"],
                  ["losses.png", "reconstructions.png", "inpainting.png", "pvqvae.safetensors", "pvqvae.json",
                   "uq_transformer.safetensors", "uq_transformer.json", "metrics.json"]),
    "train_maskgit": (["--tokenizer-steps", "2", "--transformer-steps", "2", "--batch", "4", "--pool", "16",
                       "--steps", "2"],
                      ["losses.png", "samples.png", "tokenizer.safetensors", "tokenizer.json",
                       "transformer.safetensors", "transformer.json"]),
    "train_rq": (["--vae-steps", "2", "--tf-steps", "2", "--pool", "16", "--batch", "4", "--samples", "1",
                  "--grid-rows", "2", "--t-draft", "2", "--t-revise", "1", "--m", "1"],
                 ["losses.png", "reconstructions.png", "samples.png", "inpainting.png", "editing.png",
                  "rqvae.safetensors", "rq_transformer.safetensors", "metrics.json"]),
    "train_vqddm": (["--tokenizer-steps", "2", "--finetune-steps", "1", "--refit-P", "500", "--ddm-steps", "2",
                     "--batch", "4", "--T", "50", "--pool", "16", "--sample-strides", "5", "--inpaint-steps", "5"],
                    ["losses.png", "samples.png", "inpainting.png", "tokenizer.safetensors", "vqddm.safetensors",
                     "report.json"]),
    "train_mqvae": (["--steps", "3", "--pool", "64", "--batch", "4", "--samples", "1", "--grid-rows", "2",
                     "--eval-crops", "16"],
                    ["losses.png", "importance.png", "reconstructions.png", "samples.png", "continuation.png",
                     "mqvae.safetensors", "mqvae.json", "stackformer.safetensors", "stackformer.json",
                     "metrics.json"]),
}


def _run(name: str, out: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(out), *RUNS[name][0]])


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs_and_writes_its_outputs(name, tmp_path):
    _run(name, tmp_path)
    for f in RUNS[name][1]:
        assert (tmp_path / f).stat().st_size > 0, f
    for f in tmp_path.glob("*.json"):
        json.loads(f.read_text())  # every JSON it writes parses
    if name == "train_mqvae":
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["kept"] == 32 and metrics["positions"] == 64
        assert metrics["stackformer_code_ce"] > 0 and metrics["stackformer_position_ce"] > 0
    if name == "train_vqddm":
        refit = json.loads((tmp_path / "report.json").read_text())["refit"]
        assert 0 < refit["usage_after"] <= 1 and refit["P"] == 500
