"""vqfast.integrations: each peer's own module patched vs unpatched, timed in the same run.

Every group times its rows interleaved round-robin over 3 input sets (timing.interleaved), so
load from other processes hits patched and unpatched alike; extra_info holds both medians and
`speedup` = unpatched / patched median. Rows (fp32, random weights):
  vqp_train_K1024      VectorQuantize(dim=256, codebook_size=1024) training forward (EMA update,
                       rotation trick, input requiring grad), N = 65536 rows (64 x 1024)
  vqp_eval_K1024       the same module's eval forward (no grad)
  vqp_train_K16384     codebook_size=16384, N = 16384 rows (the peer's N x K fp32 distance,
  vqp_eval_K16384      one-hot and temporaries at N = 65536 would need ~20 GB)
  vqp_rvq8_train       ResidualVQ(dim=256, num_quantizers=8, codebook_size=1024) training forward, N = 16384
  diffusers_quantizer  VQModel's VectorQuantizer on encoder latents: 4 images at 256x256, f4 (64x64
                       latents), 64 channels, 16384 codes; forward + backward (the training hot path)
  diffusers_encode     the whole VQModel encode to tokens of those images: encoder + quant conv + quantizer
  taming_quantizer     VectorQuantizer2(16384 codes, e_dim 256) at f16 (16x16 latents) for 16 images
                       at 256x256; forward + backward
  amused_step          AmusedScheduler.step on [8, 256 positions, 8192 codes] logits (aMUSEd-256 shape)
  muse_draw            muse's Gumbel-max token draw on top-k filtered logits [4, 256, 256]
  muse_generate        MaskGit.generate at muse's README size (dim 512, depth 8, 256 tokens,
                       256 codes), one prompt, 6 steps (18 by default; each step is the same work): the
                       whole sampler, transformer included

    python -m pytest benchmarks/test_bench_integrations.py --benchmark-only -s
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import types

import pytest
import torch

import vqfast.integrations as vi
from timing import interleaved, machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

ROUNDS = 3


def _compare(benchmark, rows_unpatched, apply, rounds=ROUNDS, **info):
    """Times fn(i) unpatched and under apply() interleaved (`rounds` rounds); the benchmark row is
    the patched one."""
    def patched(fn):
        def run(i):
            with apply():
                return fn(i)
        return run

    rows = {"unpatched": rows_unpatched, "patched": patched(rows_unpatched)}
    times = interleaved(rows, rounds=rounds)
    benchmark.pedantic(rows["patched"], args=(0,), rounds=1, iterations=1)
    speedup = times["unpatched"]["median"] / times["patched"]["median"]
    benchmark.extra_info.update(machine(), **info, median_s={k: v["median"] for k, v in times.items()},
                                min_s={k: v["min"] for k, v in times.items()}, speedup=speedup)
    print(f"\n{benchmark.name}: unpatched {times['unpatched']['median']:.4f} s, patched "
          f"{times['patched']['median']:.4f} s, speedup {speedup:.2f}x")


def _inputs(shape, n=3, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g).requires_grad_(requires_grad) for _ in range(n)]


VQP_ROWS = {  # name -> (module kwargs, rows, train)
    "vqp_train_K1024": (dict(codebook_size=1024), 65536, True),
    "vqp_eval_K1024": (dict(codebook_size=1024), 65536, False),
    "vqp_train_K16384": (dict(codebook_size=16384), 16384, True),
    "vqp_eval_K16384": (dict(codebook_size=16384), 16384, False),
    "vqp_rvq8_train": (dict(codebook_size=1024, num_quantizers=8), 16384, True),
}


@pytest.mark.parametrize("name", list(VQP_ROWS))
def test_bench_vector_quantize_pytorch(benchmark, name):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    kwargs, n, train = VQP_ROWS[name]
    benchmark.group = "integrations-vqp"
    torch.manual_seed(0)
    cls = vqp.ResidualVQ if "num_quantizers" in kwargs else vqp.VectorQuantize
    vq = cls(dim=256, **kwargs).train(train)
    xs = _inputs((n // 1024, 1024, 256), requires_grad=train)

    def forward(i):
        with torch.set_grad_enabled(train):
            return vq(xs[i])

    _compare(benchmark, forward, vi.apply_to_vector_quantize_pytorch, rows=n, dim=256, train=train, **kwargs)


def test_bench_diffusers_quantizer(benchmark):
    vae = pytest.importorskip("diffusers.models.autoencoders.vae")
    benchmark.group = "integrations-diffusers"
    torch.manual_seed(0)
    vq = vae.VectorQuantizer(16384, 64, beta=0.25)
    zs = _inputs((4, 64, 64, 64), requires_grad=True)

    def step(i):
        with torch.enable_grad():
            z_q, loss, _ = vq(zs[i])
            (z_q.sum() + loss).backward()

    _compare(benchmark, step, lambda: vi.apply_to_diffusers(amused_scheduler=False), rows=4 * 64 * 64,
             codes=16384, dim=64)


def test_bench_diffusers_encode(benchmark):
    diffusers = pytest.importorskip("diffusers")
    benchmark.group = "integrations-diffusers"
    torch.manual_seed(0)
    model = diffusers.VQModel(block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                              up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=64,
                              num_vq_embeddings=16384, vq_embed_dim=64, norm_num_groups=32).eval()
    images = _inputs((4, 3, 256, 256))

    def encode_to_tokens(i):
        _, _, (_, _, idx) = model.quantize(model.encode(images[i]).latents)
        return idx

    _compare(benchmark, encode_to_tokens, lambda: vi.apply_to_diffusers(amused_scheduler=False),
             images="4x3x256x256", latents="64x64x64", codes=16384)


def test_bench_taming_quantizer(benchmark):
    quantize = pytest.importorskip("taming.modules.vqvae.quantize")
    benchmark.group = "integrations-taming"
    torch.manual_seed(0)
    vq = quantize.VectorQuantizer2(16384, 256, beta=0.25)
    zs = _inputs((16, 256, 16, 16), requires_grad=True)

    def step(i):
        with torch.enable_grad():
            z_q, loss, _ = vq(zs[i])
            (z_q.sum() + loss).backward()

    _compare(benchmark, step, vi.apply_to_taming, rows=16 * 16 * 16, codes=16384, dim=256)


def test_bench_amused_step(benchmark):
    diffusers = pytest.importorskip("diffusers")
    benchmark.group = "integrations-diffusers"
    scheduler = diffusers.AmusedScheduler(mask_token_id=8191)
    scheduler.set_timesteps(12)
    t = int(scheduler.timesteps[3])
    logits = _inputs((8, 256, 8192))
    g = torch.Generator().manual_seed(1)
    sample = torch.where(torch.rand(8, 256, generator=g) < 0.6, 8191, torch.randint(0, 8191, (8, 256), generator=g))

    def step(i):
        return scheduler.step(logits[i], t, sample, generator=torch.Generator().manual_seed(i))

    _compare(benchmark, step, lambda: vi.apply_to_diffusers(vector_quantizer=False), logits="8x256x8192")


def _import_muse(tmp_path):
    pytest.importorskip("transformers")
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or its C ops fail against this torch: an empty stand-in (VGG / data only)
        stub = types.ModuleType("torchvision")
        for sub in ("transforms", "datasets", "utils", "models"):
            mod = types.ModuleType(f"torchvision.{sub}")
            mod.__getattr__ = lambda name: None
            setattr(stub, sub, mod)
            sys.modules[f"torchvision.{sub}"] = mod
        sys.modules["torchvision"] = stub
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return importlib.import_module("muse_maskgit_pytorch")
    except ImportError as e:
        pytest.skip(f"muse-maskgit-pytorch not installed: {e}")


def test_bench_muse_draw(benchmark, tmp_path):
    _import_muse(tmp_path)
    m = sys.modules["muse_maskgit_pytorch.muse_maskgit_pytorch"]
    benchmark.group = "integrations-muse"
    filtered = [m.top_k(x, 0.9) for x in _inputs((4, 256, 256))]
    _compare(benchmark, lambda i: m.gumbel_sample(filtered[i], temperature=0.7), vi.apply_to_muse_maskgit,
             logits="4x256x256")


def test_bench_muse_generate(benchmark, tmp_path):
    muse = _import_muse(tmp_path)
    benchmark.group = "integrations-muse"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 512}))
    torch.manual_seed(0)
    tf = muse.MaskGitTransformer(num_tokens=256, seq_len=256, dim=512, depth=8, dim_head=64, heads=8,
                                 t5_name=str(tmp_path))
    tf.encode_text = lambda texts: torch.zeros(len(texts), 1, 512)  # no T5 weights here: an empty prompt

    class TokensOnly(muse.VQGanVAE):  # generate() decodes through the VAE: hand back the ids
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.codebook_size = 256

        def copy_for_eval(self):
            return self

        def get_encoded_fmap_size(self, image_size):
            return image_size

        def decode_from_ids(self, ids):
            return ids

    maskgit = muse.MaskGit(image_size=16, transformer=tf, vae=TokensOnly()).eval()
    # 9 rounds: the draw is under 1% of generate, so the two medians differ by less than 3 rounds resolve
    _compare(benchmark, lambda i: maskgit.generate(texts=[""], cond_scale=1.0, timesteps=6),
             vi.apply_to_muse_maskgit, rounds=9, batch=1, steps=6, dim=512, depth=8)
