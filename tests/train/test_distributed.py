"""torchrun with two CPU processes (gloo, 127.0.0.1), DDP and FSDP: the same losses as one process
with the doubled batch over the same samples, a resumed two-process run continuing them, a rank
that dies ending the job with an error instead of a hang, `gather_cat` over ranks of uneven (and
empty) shares, and VQ-DDM's timestep sampler fed by both ranks and the same on each."""
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


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", "127.0.0.1:0"]


def vqfast_train(*args, nproc: int = 1, folder, family: str = "maskgit", **kw) -> subprocess.Popen:
    argv = [a if a is not None else str(folder) for a in (*COMMON, *args)]
    launcher = [*TORCHRUN[:4], str(nproc), *TORCHRUN[5:]] if nproc > 1 else [sys.executable]
    return subprocess.Popen([*launcher, "-m", "vqfast", "train", family, *argv], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def two_process_worker(script: str, *args) -> subprocess.CompletedProcess:
    """torchrun of tests/train/<script> on two processes with args."""
    worker = [*TORCHRUN, str(ROOT / "tests" / "train" / script), *map(str, args)]
    return subprocess.run(worker, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)


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
    proc = two_process_worker("discriminator_worker.py", image_folder, tmp_path / "run")
    assert proc.returncode == 0, "ranks ended with different discriminator weights\n" + proc.stdout + proc.stderr


@pytest.mark.slow
def test_gather_cat_concatenates_uneven_and_empty_shares_in_rank_order(tmp_path):
    proc = two_process_worker("gather_worker.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for case, first in ranks[0]["held"].items():
        second = ranks[1]["held"][case]
        n = len(first[0])
        for rank, result in enumerate(r["got"][case] for r in ranks):
            assert len(result) == len(first) == 5, (case, rank)
            for i, (got, a, b) in enumerate(zip(result, first, second)):
                where = f"{case}, tensor {i}, on rank {rank}"
                assert got.dtype == a.dtype == b.dtype, where
                assert got.shape == (n + len(b),), where
                assert torch.equal(got[:n], a) and torch.equal(got[n:], b), where
    assert ranks[0]["held"]["uneven"][0].shape != ranks[1]["held"]["uneven"][0].shape
    for r in ranks:  # int64 beside an empty float32 tensor: an error on both ranks, not a float result
        assert "torch.int64 on rank 0 but torch.float32 on rank 1" in r["dtype_error"]


@pytest.mark.slow
def test_step_totals_and_packed_sums_in_one_reduce(tmp_path):
    proc = two_process_worker("gather_worker.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        logged, quiet = got["totals"]
        assert logged == (True, {"loss": 2.0, "rec": 0.125}, (7, 2 ** 41 + 1))  # rank 1 asked to stop
        assert quiet == (False, {}, (1,))
        vec, mat, ints, f64 = got["packed"]
        assert torch.equal(vec, torch.full((3,), 3.0)) and torch.equal(mat, torch.arange(6.0).view(2, 3) * 3)
        assert torch.equal(ints, torch.tensor([3])) and ints.dtype == torch.int64
        assert torch.equal(f64, torch.full((2,), 3.0, dtype=torch.float64))


def test_gather_cat_in_one_process_returns_detached_cpu_tensors():
    from vqfast.train.distributed import Context, gather_cat

    ctx = Context(0, 1, 0, torch.device("cpu"))
    x = torch.randn(3, requires_grad=True)
    t = torch.arange(4)
    got_x, got_t = gather_cat(x, t, ctx=ctx)
    assert not got_x.requires_grad and torch.equal(got_x, x.detach()) and torch.equal(got_t, t)
    with pytest.raises(ValueError, match=r"tensors\[1\] .* 0-dim"):
        gather_cat(t, torch.tensor(1.0), ctx=ctx)
    with pytest.raises(TypeError, match=r"tensors\[0\] must be a torch.Tensor"):
        gather_cat([1, 2], ctx=ctx)


def _vqgan_checkpoint(folder: Path) -> Path:
    """A tiny VQGAN tokenizer (random weights) saved as the model stage reads it."""
    from vqfast import checkpoint
    from vqfast.models.common.vqgan import VQGAN

    torch.manual_seed(0)
    checkpoint.save(VQGAN.from_preset("tiny"), folder / "model")
    return folder


@pytest.mark.slow
def test_two_process_vqddm_ranks_keep_one_timestep_sampler_fed_by_both(image_folder, tmp_path):
    """VQ-DDM's model stage gathers every rank's (t, L_t) into the importance sampler: the checkpoint
    holds both ranks' pairs, and a replay of the run shows each rank holding the same sampler after
    every step. T = 3: warm (> 10 losses of every t) within 16 steps of 2 x 2 pairs, and p(t) is not
    uniform then (T = 2 is: t = 1 takes t = 2's weight)."""
    from vqfast.models.vqddm import ImportanceSampler

    tokenizer, steps, T, batch = _vqgan_checkpoint(tmp_path / "vq"), 16, 3, 2
    run = tmp_path / "cli"
    finish(vqfast_train("--out", str(run), "--stage", "model", "--tokenizer", str(tokenizer), "--override", f"T={T}",
                        "--steps", str(steps), "--batch-size", str(batch), nproc=2, folder=image_folder,
                        family="vqddm"))
    saved = load_state(latest(run))["timestep_sampler"]
    assert int(saved["count"].sum()) == 2 * batch * steps  # both ranks' pairs of every step
    sampler = ImportanceSampler(T)
    sampler.load_state_dict(saved)
    probs = sampler.probs()
    assert sampler.warm and not torch.allclose(probs, torch.full_like(probs, 1 / T))

    # the same run (its config, seed and data order) again, each rank keeping its sampler per step
    replay, states = tmp_path / "replay", tmp_path / "states"
    states.mkdir()
    proc = two_process_worker("sampler_worker.py", image_folder, tokenizer, replay, states, steps, T)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    per_rank = [torch.load(states / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == steps
    for step, (a, b) in enumerate(zip(*per_rank), start=1):
        assert torch.equal(a["history"], b["history"]) and torch.equal(a["count"], b["count"]), f"step {step}"
        assert int(a["count"].sum()) == 2 * batch * step
    warm_from = next(s for s, a in enumerate(per_rank[0], start=1) if bool((a["count"][1:] > 10).all()))
    assert warm_from < steps  # some steps drew t from the non-uniform p(t)
    for rank_state in (per_rank[0][-1], per_rank[1][-1], load_state(latest(replay))["timestep_sampler"]):
        assert torch.equal(rank_state["history"], saved["history"]) and torch.equal(rank_state["count"], saved["count"])


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
