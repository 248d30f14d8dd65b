"""Concurrency: every op called from 8 Python threads at once, and from DataLoader worker
processes, returns what serial calls return; `torch.set_num_threads` 1, 2 and 3 give the
same bits.

The docs promise bit-identical counts and sums for ema_statistics and the *_with_statistics
ops at every thread count (a summation order fixed by (N, K)), the same tokens on every
backend for the samplers and posterior_sample (counter-based noise), and losses that do not
change with the thread count; no output of any op depends on it in fact, so these tests hold
every output to `torch.equal`.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from tests.conftest import available
from tests.ops.op_calls import CALLS, cases

BACKENDS = [b for b in ("cpu", "reference", "triton") if available(b)]
N_THREADS = 8
# The Triton interpreter runs ~0.1-1 s a call: the worker-process test runs its cheapest kernels
# only; and it is not thread-safe (each launch swaps triton.language's functions for its own,
# so a concurrent launch fails "Did you forget to add @triton.jit ?"), so no Triton case runs
# in the 8-thread test here (a CUDA machine has no interpreter but these tests build CPU inputs).
TRITON_OPS = {"nearest_code", "quantize_backward", "dual_codebook_quantize_backward", "ema_statistics",
              "ema_update_"}


def _size(backend):
    return "small" if backend == "cpu" else "tiny"  # the reference and Triton: seconds per 8 calls otherwise


def _equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name, backend", [pytest.param(n, b, id=f"{n}-{b}") for n, b in cases(BACKENDS)
                                           if b != "triton"])
def test_concurrent_threads_match_serial(name, backend):
    calls = [CALLS[name](backend, seed, _size(backend)) for seed in range(N_THREADS)]
    serial = [c.run(**c.inputs) for c in calls]
    start = threading.Barrier(N_THREADS)
    repeats = 2 if backend == "cpu" else 1

    def worker(i):
        start.wait()  # every thread enters the op together
        return [calls[i].run(**calls[i].inputs) for _ in range(repeats)]

    with ThreadPoolExecutor(N_THREADS) as pool:
        concurrent = list(pool.map(worker, range(N_THREADS)))
    bad = [i for i in range(N_THREADS) if not all(_equal(serial[i], out) for out in concurrent[i])]
    assert not bad, f"{name} on {backend}: threads {bad} differ from the serial calls"


@pytest.mark.parametrize("name, backend", [pytest.param(n, b, id=f"{n}-{b}") for n, b in cases(BACKENDS)
                                           if b != "triton"])
def test_thread_counts_give_the_same_bits(name, backend):
    call = CALLS[name](backend, 3, _size(backend))
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(call.run(**call.inputs))
    finally:
        torch.set_num_threads(before)
    assert _equal(results[0], results[1]) and _equal(results[0], results[2])


class _Calls(Dataset):
    """Item i: the outputs of case i of the table (inputs rebuilt from the seed in the worker)."""

    def __init__(self, table):
        self.table = table

    def __len__(self):
        return len(self.table)

    def __getitem__(self, i):
        name, backend, seed = self.table[i]
        call = CALLS[name](backend, seed, _size(backend))
        return call.run(**call.inputs)


def test_dataloader_workers_match_serial():
    """Every op (cpu and reference; Triton's cheapest) in forked DataLoader workers, num_workers=2."""
    table = [(n, b, 0) for n, b in cases(BACKENDS) if b != "triton" or n in TRITON_OPS]
    data = _Calls(table)
    serial = [data[i] for i in range(len(data))]
    loader = DataLoader(data, batch_size=None, num_workers=2, multiprocessing_context="fork")
    forked = list(loader)
    bad = [table[i] for i in range(len(table)) if not _equal(serial[i], forked[i])]
    assert len(forked) == len(table) and not bad, f"differ in the workers: {bad}"
