"""Data-parallel codebook learning: two gloo processes on 127.0.0.1 keep bit-identical codebooks,
equal to one process trained on the concatenated batches.

Features are multiples of 1/4 in [-2, 2), so every per-code sum is exact in fp32 and the
all-reduced statistics equal the single-process ones bit for bit (VectorQuantizer, k-means);
the residual quantizer's deeper levels see non-dyadic residuals, so it matches to rounding.
"""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vqfast
from vqfast.quantizers import ResidualQuantizer, VectorQuantizer

D, K, STEPS = 8, 12, 4
SIZES = (30, 50)  # rows per rank: unequal on purpose


def batches():
    g = torch.Generator().manual_seed(0)
    return [[torch.randint(-8, 8, (n, D), generator=g).float() / 4 for n in SIZES] for _ in range(STEPS)]


def kmeans_data():
    g = torch.Generator().manual_seed(1)
    centers = torch.randint(-40, 40, (4, D), generator=g).float()
    return [centers.repeat(n // 4 + 1, 1)[:n] + torch.randint(-4, 4, (n, D), generator=g).float() / 4 for n in SIZES]


def modules():
    # threshold 0.9 with decay 0.5: several codes die and are re-seeded every step
    return (VectorQuantizer(D, K, decay=0.5, threshold_dead_code=0.9, seed=3),
            ResidualQuantizer(D, K, depth=2, decay=0.8, seed=5))


def train(parts):
    """parts(step) -> this process's batch; returns the trained state_dicts."""
    vq, rq = modules()
    for step in range(STEPS):
        vq(parts(step))
        rq(parts(step) * 0.5)
    return vq.state_dict(), rq.state_dict()


def _worker(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = batches()
        states = train(lambda s: data[s][rank])
        pts = kmeans_data()
        init = torch.cat(pts)[:4].clone()
        km = vqfast.kmeans(pts[rank], 4, iters=3, init=init, sync_distributed=True)
        torch.save({"states": states, "centroids": km.centroids, "inertia": km.inertia},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_each_other_and_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    data = batches()
    single = train(lambda s: torch.cat(data[s]))
    for i in range(2):
        for name, t in single[i].items():
            assert torch.equal(r0["states"][i][name], r1["states"][i][name]), f"ranks differ: {name}"
            if i == 0:
                assert torch.equal(r0["states"][i][name], t), f"distributed != single process: {name}"
            else:  # deeper residuals are not dyadic: sums of the shards round differently
                torch.testing.assert_close(r0["states"][i][name], t, rtol=1e-5, atol=1e-5)
    pts = torch.cat(kmeans_data())
    km = vqfast.kmeans(pts, 4, iters=3, init=pts[:4].clone())
    assert torch.equal(r0["centroids"], r1["centroids"]) and torch.equal(r0["centroids"], km.centroids)
    torch.testing.assert_close(r0["inertia"], km.inertia)
