"""Leaks: many calls of every op (forward and backward, every backend that runs here) keep the
process's memory flat, and no op keeps a reference to its inputs after it returns.

Three measures, each taken after gc.collect() around a loop of calls on one thread (so every
allocation is in glibc's main arena, the one mallinfo2 reports):
- RSS growth <= RSS_BOUND (pages, as a user's monitor sees it);
- bytes malloc'd and not freed (glibc mallinfo2: tensors, C++ scratch) <= HEAP_BOUND, which a
  leak of more than HEAP_BOUND / calls bytes per call (7 B at 10^4 calls, 131 B at 500) fails;
- objects tracked by Python's gc <= OBJECT_BOUND more (a leaked tensor per call fails it).
Calls per op: COUNTS in the default run, SLOW_COUNTS with --runslow / VQFAST_SLOW=1 (the
reference and the Triton interpreter are 10^2 to 10^5 times slower than the C++ kernels; the
default run checks each Triton launcher for references to its inputs, one call each).
"""
import ctypes
import gc
import weakref

import psutil
import pytest
import torch

from vqfast.ops import diffusion as diffusion_ops
from tests.conftest import available
from tests.ops.op_calls import CALLS, cases

BACKENDS = [b for b in ("cpu", "reference", "triton") if available(b)]
COUNTS = {"cpu": 500, "reference": 20}  # the Triton interpreter (~0.1-1 s a call) loops only in SLOW_COUNTS
SLOW_COUNTS = {"cpu": 10_000, "reference": 1000, "triton": 30}
RSS_BOUND = 8 << 20
HEAP_BOUND = 64 << 10
OBJECT_BOUND = 10  # measured growth: 0 for every op


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use():
    """Bytes malloc'd and not yet freed in the main arena (None without glibc's mallinfo2)."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    info = fn()
    return info.uordblks + info.hblkhd


def _memory():
    gc.collect()
    return psutil.Process().memory_info().rss, _heap_in_use(), len(gc.get_objects())


@pytest.fixture(autouse=True)
def _one_thread_frozen_gc():
    """One intra-op thread; the objects alive before the test frozen out of gc's view, so a
    collection walks only what the test made (~1 ms instead of ~0.2 s over ~300k objects)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.freeze()
    yield
    gc.unfreeze()
    torch.set_num_threads(n)


def _params(counts, suffix="", marks=()):
    return [pytest.param(name, backend, counts[backend], id=f"{name}-{backend}{suffix}", marks=marks)
            for name, backend in cases(BACKENDS) if backend in counts]


@pytest.mark.parametrize("name, backend, calls", _params(COUNTS) + _params(SLOW_COUNTS, "-slow", pytest.mark.slow))
def test_repeated_calls_keep_memory_flat(name, backend, calls):
    call = CALLS[name](backend, 0, "tiny")
    for _ in range(max(2, calls // 10)):  # warm-up: lazy imports, kernel caches, allocator pools
        out = call.run(**call.inputs)
    out = None
    rss0, heap0, objects0 = _memory()
    for _ in range(calls):
        out = call.run(**call.inputs)
    out = None
    rss1, heap1, objects1 = _memory()
    report = (f"{name} on {backend}, {calls} calls: RSS {rss0 >> 10} -> {rss1 >> 10} KiB, "
              f"heap {heap0} -> {heap1} B, gc objects {objects0} -> {objects1}")
    print(report)
    assert rss1 - rss0 <= RSS_BOUND, report
    if heap0 is not None:
        assert heap1 - heap0 <= HEAP_BOUND, report
    assert objects1 - objects0 <= OBJECT_BOUND, report


@pytest.mark.parametrize("name, backend", cases(BACKENDS), ids=lambda v: v)
def test_op_keeps_no_reference_to_its_inputs(name, backend):
    call = CALLS[name](backend, 1, "tiny")
    refs = {key: weakref.ref(t) for key, t in call.inputs.items() if isinstance(t, torch.Tensor)}
    schedule = call.inputs.get("sched")
    if schedule is not None:  # the diffusion ops cache per-schedule tables: weakly, so the schedule dies too
        refs.update(alpha_bar=weakref.ref(schedule.alpha_bar), alpha=weakref.ref(schedule.alpha))
    out = call.run(**call.inputs)
    del call, schedule
    gc.collect()
    alive = [key for key, r in refs.items() if r() is not None]
    assert not alive, f"{name} on {backend} keeps {alive} alive after returning"
    assert all(isinstance(t, torch.Tensor) for t in out)  # the outputs themselves are still held


def test_diffusion_table_cache_is_bounded():
    """Per-schedule coefficient tables: at most _MAX_TABLES, whatever the number of schedules."""
    before = len(diffusion_ops._TABLES)
    assert before <= diffusion_ops._MAX_TABLES
    for T in range(2, 2 + 3 * diffusion_ops._MAX_TABLES):
        call = CALLS["posterior_sample"]("cpu", T, "tiny")
        call.inputs["sched"] = type(call.inputs["sched"])(T)
        call.inputs["t"] = call.inputs["t"].clamp_max(T)
        call.run(**call.inputs)
    assert 0 < len(diffusion_ops._TABLES) <= diffusion_ops._MAX_TABLES
