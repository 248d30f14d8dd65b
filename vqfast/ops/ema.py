"""ema_statistics and ema_update_ (PUT supp. eq. 2): validation, dispatch.

The per-code statistics of a batch are read in one pass over x without the N x K
one-hot matrix of the papers' code; the EMA blend then touches only K x d state.
Between the two, a data-parallel caller all-reduces (counts, sums)
(`vqfast.quantizers.distributed`).
"""
from __future__ import annotations

import torch

from vqfast import _backend
from vqfast.ops import _dispatch, _validate
from vqfast.reference import ema as ref

HAS = ("cpu", "triton")  # backends with EMA kernels besides the reference
INDEX_DTYPES = (torch.int64, torch.int32)


def _run_statistics(x, idx, K, backend):
    if backend == "reference":
        return ref.ema_statistics(x, idx, K)
    if backend == "cpu":
        return torch.ops.vqfast_cpu.ema_statistics(x, idx, K)
    if backend == "triton":
        from vqfast.triton_kernels.ema import ema_statistics_triton
        return ema_statistics_triton(x, idx, K)
    raise AssertionError(f"unreachable backend {backend}")


@torch.library.custom_op("vqfast::ema_statistics", mutates_args=())
def _ema_statistics_op(x: torch.Tensor, idx: torch.Tensor, K: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    counts, sums = _run_statistics(x, idx, K, backend)
    return counts, sums


@_ema_statistics_op.register_fake
def _(x, idx, K, backend):
    return x.new_empty(K, dtype=torch.float32), x.new_empty(K, x.shape[1], dtype=torch.float32)


def _run_update(cluster_size, embed_sum, counts, sums, decay, eps, backend):
    if backend == "reference":
        return ref.ema_update_(cluster_size, embed_sum, counts, sums, decay, eps)
    if backend == "cpu":
        return torch.ops.vqfast_cpu.ema_update_(cluster_size, embed_sum, counts, sums, decay, eps)
    if backend == "triton":
        from vqfast.triton_kernels.ema import ema_update_triton
        return ema_update_triton(cluster_size, embed_sum, counts, sums, decay, eps)
    raise AssertionError(f"unreachable backend {backend}")


@torch.library.custom_op("vqfast::ema_update_", mutates_args=("cluster_size", "embed_sum"))
def _ema_update_op(cluster_size: torch.Tensor, embed_sum: torch.Tensor, counts: torch.Tensor,
                   sums: torch.Tensor, decay: float, eps: float, backend: str) -> torch.Tensor:
    return _run_update(cluster_size, embed_sum, counts, sums, decay, eps, backend)


@_ema_update_op.register_fake
def _(cluster_size, embed_sum, counts, sums, decay, eps, backend):
    return torch.empty_like(embed_sum)


def check_indices(idx, n: int, K: int, name: str = "idx", *, values: bool = True) -> None:
    """idx: an int64/int32 tensor [n] with every value in [0, K) (the values scan skipped if not `values`)."""
    _validate.tensor(name, idx, dtypes=INDEX_DTYPES, dim=1)
    _validate.shape(name, idx, (n,), "one index per row of x")
    if values:
        _validate.values_below(name, idx, K, "K")


def ema_statistics(x: torch.Tensor, idx: torch.Tensor, K: int, *,
                   backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Members and member sums per code, in one pass over x.

    x [N, d] (fp32/fp16/bf16), idx [N] int64/int32 in [0, K) -> counts [K] fp32,
    sums [K, d] fp32, accumulated in fp32 (fp64 in the reference). No N x K one-hot.
    The CPU kernel is deterministic: the rows are cut into chunks fixed by (N, K), each
    chunk's rows added in row order, the chunk sums added in chunk order, whatever the
    thread count. The Triton kernel uses atomics (order not fixed).

        counts, sums = vqfast.ops.ema_statistics(x, idx, K=512)
    """
    _validate.tensor("x", x, dim=2)
    K = _validate.integer("K", K, low=1)
    check_indices(idx, x.shape[0], K, values=False)
    device = _validate.same_device(x=x, idx=idx)
    name = _backend.resolve("ema_statistics", backend, device, has=HAS)
    # The CPU kernel range-checks idx in its accumulation pass (skipping bad rows, raising the
    # same ValueError before it returns); that saves a separate scan of idx here.
    if name != "cpu":
        check_indices(idx, x.shape[0], K)
    xc, ic = x.detach().contiguous(), idx.detach().long().contiguous()
    return _dispatch.run(_ema_statistics_op, "ema_statistics", (xc, ic, K), name)


def ema_update_(cluster_size: torch.Tensor, embed_sum: torch.Tensor, counts: torch.Tensor,
                sums: torch.Tensor, decay: float = 0.99, eps: float = 1e-5, *,
                backend: str = "auto") -> torch.Tensor:
    """PUT eq. 2 in place, with Laplace smoothing; returns the new codebook.

    cluster_size [K] fp32 and embed_sum [K, d] fp32 (the EMA state) become
    n = g n + (1 - g) counts, s = g s + (1 - g) sums; returns s / n~ [K, d] fp32 where
    n~ = (n + eps) / (sum(n) + K eps) * sum(n). eps = 0 is the paper's e = s / n.

        codebook = vqfast.ops.ema_update_(cluster_size, embed_sum, counts, sums, 0.99, 1e-5)
    """
    decay = _validate.real("decay", decay, low=0.0, high=1.0, high_open=True)
    eps = _validate.real("eps", eps, low=0.0)
    _validate.tensor("cluster_size", cluster_size, dtypes=(torch.float32,), dim=1)
    _validate.tensor("embed_sum", embed_sum, dtypes=(torch.float32,), dim=2)
    _validate.tensor("counts", counts, dtypes=(torch.float32,), dim=1)
    _validate.tensor("sums", sums, dtypes=(torch.float32,), dim=2)
    _validate.nonempty("embed_sum", embed_sum, (0,), "[K, d] with K >= 1 (at least one code)")
    K, d = embed_sum.shape
    for name, t, shape in (("cluster_size", cluster_size, (K,)), ("counts", counts, (K,)), ("sums", sums, (K, d))):
        _validate.shape(name, t, shape, f"to match embed_sum [K={K}, d={d}]")
    for name, t in (("cluster_size", cluster_size), ("embed_sum", embed_sum)):
        _validate.contiguous(name, t, "it is updated in place")
        _validate.separate("counts", counts, name, t)
        _validate.separate("sums", sums, name, t)
    device = _validate.same_device(cluster_size=cluster_size, embed_sum=embed_sum, counts=counts, sums=sums)
    name = _backend.resolve("ema_update_", backend, device, has=HAS)
    return _ema_update_op(cluster_size, embed_sum, counts.contiguous(), sums.contiguous(), decay, eps, name)
