"""GPU sampler rows: MaskGIT decoding and Stackformer sampling tokens/s on CUDA, at the papers'
sizes (random weights), bf16 autocast; skipped without a CUDA device.

    python -m pytest benchmarks/test_bench_gpu_samplers.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch

from vqfast.models.maskgit import BidirectionalTransformer, maskgit_decode
from vqfast.models.mqvae import Stackformer, stackformer_sample

from test_bench_gpu_search import cuda_time  # noqa: E402  (benchmarks/ is on sys.path under pytest)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BATCH = 8


def paper_preset(cls) -> str:
    """The largest preset of a class (the paper's size)."""
    with torch.device("meta"):
        sizes = {name: sum(p.numel() for p in cls.from_preset(name).parameters()) for name in cls.PRESETS}
    return max(sizes, key=sizes.get)


def test_maskgit_decode_gpu(benchmark):
    name = paper_preset(BidirectionalTransformer)
    net = BidirectionalTransformer.from_preset(name, device="cuda").eval()
    run = lambda: maskgit_decode(net, batch_size=BATCH, steps=8, generator=0,  # noqa: E731
                                 autocast_dtype=torch.bfloat16)
    t = cuda_time(run)
    benchmark.group = "gpu maskgit_decode"
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), preset=name, seconds=t,
                                tokens_per_s=BATCH * net.seq_len / t)
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)


def test_stackformer_sample_gpu(benchmark):
    name = paper_preset(Stackformer)
    net = Stackformer.from_preset(name, device="cuda").eval()
    labels = torch.arange(BATCH, device="cuda") if net.config.get("num_classes") else None
    run = lambda: stackformer_sample(net, batch_size=BATCH, class_labels=labels, generator=0,  # noqa: E731
                                     autocast_dtype=torch.bfloat16)
    t = cuda_time(run)
    n = run().tokens.shape[1]
    benchmark.group = "gpu stackformer_sample"
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), preset=name, seconds=t,
                                tokens_per_s=BATCH * n / t)
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
