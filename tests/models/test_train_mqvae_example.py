"""examples/train_mqvae.py runs end to end (a few steps of both stages) and writes its outputs."""
import importlib.util
import json
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_mqvae.py"


def test_train_mqvae_example_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("train_mqvae_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path), "--steps", "3", "--pool", "64", "--batch", "4", "--samples", "1",
                 "--grid-rows", "2", "--eval-crops", "16", "--log-every", "100"])
    for name in ("losses.png", "importance.png", "reconstructions.png", "samples.png", "continuation.png",
                 "mqvae.safetensors", "mqvae.json", "stackformer.safetensors", "stackformer.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["kept"] == 32 and metrics["positions"] == 64
    assert metrics["stackformer_code_ce"] > 0 and metrics["stackformer_position_ce"] > 0
