"""benchmarks/gpu_check.py's dry run (no CUDA here): every step is reached, the report is written,
and the steps that need CUDA say so."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what a machine without CUDA does")
def test_gpu_check_dry_run_reaches_every_step(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(tmp_path), "--budget", "60"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    names = [s["name"] for s in report["steps"]]
    assert names == ["build", "info", "op_tests", "put_table4", "op_benchmarks", "samplers"]
    assert report["dry_run"] and report["device"]["cuda_available"] is False
    for step in report["steps"]:
        expected = "ok" if step["name"] == "info" else "skipped: no CUDA"
        assert step["status"] == expected, step
        assert f"[{step['name']}] {expected}" in proc.stdout
    md = (tmp_path / "gpu_report.md").read_text()
    assert "| op_tests | skipped: no CUDA |" in md and "no CUDA device" in md
    info = next(s for s in report["steps"] if s["name"] == "info")
    assert "cpu" in info["log_tail"]  # `python -m vqfast info` lists the backends


def test_gpu_check_names_every_benchmark_file_it_runs():
    """A step that names a missing file would only fail on the GPU machine: check here."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    for step in gpu_check._steps(Path("/tmp")):
        for arg in step["cmd"]:
            if arg.startswith(("tests/", "benchmarks/")):
                assert (ROOT / arg).exists(), arg
