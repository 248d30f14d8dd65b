"""torchrun with two CPU processes (gloo, 127.0.0.1), DDP and FSDP: the same losses as one process
with the doubled batch over the same samples, a resumed two-process run continuing them, and a rank
that dies ending the job with an error instead of a hang."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vqfast.train.checkpointing import latest, load_state, read_weights
from vqfast.train.log import read_log

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["--data", None, "--batch-size", "2", "--no-progress", "--holdout", "0.2", "--dist-timeout", "60"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def vqfast_train(*args, nproc: int = 1, folder, **kw) -> subprocess.Popen:
    argv = [a if a is not None else str(folder) for a in (*COMMON, *args)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"] if nproc > 1 else [sys.executable]
    return subprocess.Popen([*launcher, "-m", "vqfast", "train", "maskgit", *argv], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def losses(run):
    return [r["loss"] for r in read_log(run)]


@pytest.mark.slow
@pytest.mark.parametrize("shard", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_doubled_batch_and_resume(image_folder, tmp_path, shard):
    # start both from one set of weights whose codebook is initialized: k-means init clusters
    # rank 0's batch only, by the quantizer's design
    init = tmp_path / "init"
    finish(vqfast_train("--out", str(init), "--steps", "1", folder=image_folder))
    common = ("--steps", "3", "--init-from", str(init))
    two = tmp_path / "two"
    finish(vqfast_train("--out", str(two), "--stop-after", "2", *common, *shard, nproc=2, folder=image_folder))
    finish(vqfast_train("--out", str(two), "--resume", *common, *shard, nproc=2, folder=image_folder))
    one = tmp_path / "one"
    finish(vqfast_train("--out", str(one), *common, "--batch-size", "4", folder=image_folder))
    assert len(losses(one)) == len(losses(two)) == 3
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    # FSDP saves the gathered weights. Adam moves a weight by about lr per step whatever its
    # gradient's size, so rounding in a near-zero gradient can shift it by up to ~lr (1e-4) a step.
    a, b = read_weights(latest(one)), read_weights(latest(two))
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=3e-4) for k in a)


@pytest.mark.slow
def test_two_processes_train_the_discriminator_with_accumulation_and_resume_exactly(image_folder, tmp_path):
    common = ("--steps", "3", "--disc-start", "1", "--grad-accum", "2", "--batch-size", "1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    finish(vqfast_train("--out", str(straight), *common, nproc=2, folder=image_folder))
    finish(vqfast_train("--out", str(resumed), "--stop-after", "2", *common, nproc=2, folder=image_folder))
    finish(vqfast_train("--out", str(resumed), "--resume", *common, nproc=2, folder=image_folder))
    records = read_log(straight)
    assert "d_loss" not in records[0] and all(r["d_loss"] > 0 and r["d_weight"] > 0 for r in records[1:])
    assert [(r["loss"], r["d_loss"]) for r in read_log(resumed)[1:]] == [(r["loss"], r["d_loss"]) for r in records[1:]]
    a, b = (load_state(latest(run))["discriminator"]["weights"] for run in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_the_discriminator_is_data_parallel(image_folder, tmp_path):
    worker = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", "127.0.0.1:0", str(ROOT / "tests" / "train" / "discriminator_worker.py"),
              str(image_folder), str(tmp_path / "run")]
    proc = subprocess.run(worker, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, "ranks ended with different discriminator weights\n" + proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_dead_rank_ends_the_job_with_an_error(image_folder, tmp_path):
    run = tmp_path / "run"
    proc = vqfast_train("--out", str(run), "--steps", "100000", nproc=2, folder=image_folder)
    try:
        deadline = time.time() + 180
        while not read_log(run) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert read_log(run), "the two-process run did not start"
        victim = _worker_with_rank(proc.pid, 1)
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "FAILED" in out or "ChildFailedError" in out, out[-2000:]


def _worker_with_rank(parent: int, rank: int) -> int:
    """The pid of the worker process of `parent` (the torchrun launcher) whose RANK is rank."""
    import psutil
    for child in psutil.Process(parent).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                return child.pid
        except psutil.Error:
            continue
    raise AssertionError(f"no worker with RANK={rank} under pid {parent}")
