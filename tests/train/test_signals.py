"""SIGTERM (what a scheduler or torchrun sends) saves a checkpoint at the current step and ends
the run; --resume continues from it."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vqfast.train.checkpointing import latest, load_state
from vqfast.train.log import read_log

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sigterm_saves_and_resume_continues(image_folder, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "vqfast", "train", "maskgit", "--data", str(image_folder), "--out", str(run),
            "--steps", "100000", "--batch-size", "2", "--no-progress", "--holdout", "0.2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not read_log(run) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert read_log(run), "training did not start"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    stopped = [r for r in read_log(run, None) if r["kind"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["reason"] == "signal"
    step = stopped[0]["step"]
    assert load_state(latest(run))["step"] == step < 100000
    subprocess.run([*args, "--resume", "--stop-after", str(step + 1)], cwd=ROOT, env=env, check=True, timeout=300,
                   capture_output=True)
    assert [r["step"] for r in read_log(run)][-1] == step + 1
