"""PUT supp. Table 4 side by side: UQ-Transformer tokens/s (Algorithm 1) and P-VQVAE images/s.

Rows, all measured in one run on random-init models of the Table 3 / Table 1 sizes
(L = 32 x 32 = 1024 tokens, half of them unknown, batch 1, a fixed number of
Algorithm-1 iterations so the run stays in minutes on CPU):
  official   the official-style loop: explicit softmax(QK^T)V attention in fp32, a full
             softmax over the vocabulary, a Python top-K filter + torch.multinomial, a
             Python update loop, everything recomputed every iteration
  fp32       vqfast.samplers.put_fill (fused select_and_sample_topk, SDPA attention)
  bf16       the same under torch.autocast(bfloat16) (LayerNorm/head in fp32)
Each row's extra_info holds tokens/s, the seed's RTX 3090 figure, the speedup over the
official-style loop, the forward's FLOP/s as a fraction of this machine's GEMM rate for
its dtype (an [L, D] x [D, 4D] matmul timed just before the row) and, for bf16, the logit
error and greedy agreement against fp32.

    python -m pytest benchmarks/test_bench_put.py --benchmark-only
    PUT_BENCH_PRESETS=ffhq PUT_BENCH_ITERS=2 VQFAST_BENCH_THREADS=1 python -m pytest benchmarks/test_bench_put.py
"""
from __future__ import annotations

import math
import os
import time

import pytest
import torch
import torch.nn.functional as F

from vqfast.models.put import PVQVAE, UQTransformer
from vqfast.ops.sampling import select_and_sample_topk
from vqfast.samplers.put import put_fill
from timing import machine  # noqa: E402  (benchmarks/ is on sys.path under pytest)

# PUT supp. Table 4 (RTX 3090).
SEED_TOKENS_PER_S = {"ffhq": 37.138, "places2": 32.048, "imagenet": 17.186}
SEED_IMAGES_PER_S = 62.949

PRESETS = [p for p in os.environ.get("PUT_BENCH_PRESETS", "ffhq,places2,imagenet").split(",") if p]
ITERS = int(os.environ.get("PUT_BENCH_ITERS", "1"))     # Algorithm-1 iterations per timed round
ROUNDS = int(os.environ.get("PUT_BENCH_ROUNDS", "3"))   # rounds, one input set each (rotated)
TOP_K, L, V, D_FEAT = 50, 1024, 512, 256
if os.environ.get("VQFAST_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["VQFAST_BENCH_THREADS"]))

_TIMES: dict[tuple[str, str], float] = {}  # (preset, row) -> median seconds per iteration, this run


def gemm_rate(m: int, k: int, n: int, dtype: torch.dtype) -> float:
    """FLOP/s of an [m, k] x [k, n] matmul in dtype (median of 5 after a warm-up)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * m * k * n / sorted(ts)[2]


def forward_flops(model: UQTransformer, batch: int, length: int) -> float:
    """Matmul FLOPs of one forward: projections + MLP + attention (QK^T and PV) + embedding + head."""
    c = model.config
    D, n = c["dim"], c["n_layers"]
    per_token = n * (4 * D * D + 2 * c["mlp_ratio"] * D * D) + c["feature_dim"] * D + D * c["vocab_size"]
    return 2 * batch * length * per_token + 4 * batch * n * length * length * D


def official_forward(model: UQTransformer, feats: torch.Tensor) -> torch.Tensor:
    """The seed's public transformer forward: separate q/k/v GEMMs, explicit fp32 softmax(QK^T / sqrt(D'))V."""
    x = model.emb(feats) + model.pos[:, :feats.shape[1]]
    for blk in model.blocks:
        h = blk.norm1(x)
        B, T, C = h.shape
        a = blk.attn
        nh = a.heads
        w, bias = a.qkv.weight.chunk(3), a.qkv.bias.chunk(3)
        q, k, v = (F.linear(h, w[i], bias[i]).view(B, T, nh, C // nh).transpose(1, 2) for i in range(3))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + a.proj(y)
        x = x + blk.mlp(blk.norm2(x))
    return model.head(model.ln(x))


def official_fill(model, codes, feats, tokens, known, iters, top_k, temperature, generator):
    """The seed's public sampling loop (max-probability position, Python top-K filter, multinomial)."""
    feats, tokens, known = feats.clone(), tokens.clone(), known.clone()
    for _ in range(iters):
        logits = official_forward(model, feats)
        probs_all = F.softmax(logits, dim=-1)                      # full softmax over the vocabulary
        conf = probs_all.max(dim=-1).values.masked_fill(known, float("-inf"))
        index = torch.topk(conf, k=1, dim=1).indices              # B x 1
        one_hot = F.one_hot(index, logits.shape[1]).float()       # B x 1 x L
        sel = torch.einsum("blc,bnl->bnc", logits, one_hot)       # B x 1 x V
        kth = torch.topk(sel, k=top_k, dim=-1).values[..., -1:]
        filtered = sel.masked_fill(sel < kth, float("-inf"))
        probs = F.softmax(filtered / temperature, dim=-1)
        sample = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(index.shape)
        vecs = codes(sample)
        for i in range(index.shape[0]):
            for j in range(index.shape[1]):
                p = int(index[i, j])
                if not known[i, p]:
                    feats[i, p], tokens[i, p], known[i, p] = vecs[i, j], sample[i, j], True
    return tokens


def _inputs(n_sets: int = 3):
    """Rotated input sets: features [1, L, 256], tokens, known (half of the positions) and a codebook."""
    g = torch.Generator().manual_seed(0)
    sets = []
    for _ in range(n_sets):
        known = torch.zeros(1, L, dtype=torch.bool)
        known[0, torch.randperm(L, generator=g)[:L // 2]] = True
        sets.append((torch.randn(1, L, D_FEAT, generator=g).relu(), torch.randint(0, V, (1, L), generator=g), known))
    return sets, torch.randn(V, D_FEAT, generator=g).relu()


@pytest.fixture(scope="module")
def env():
    sets, codebook = _inputs()
    return {"sets": sets, "codes": lambda t: F.embedding(t, codebook), "machine": machine()}


_MODELS: dict[str, UQTransformer] = {}


def _model(preset: str) -> UQTransformer:
    if preset not in _MODELS:
        _MODELS.clear()  # one preset in memory at a time
        torch.manual_seed(0)
        _MODELS[preset] = UQTransformer.from_preset(preset).eval()
    return _MODELS[preset]


def _timed(benchmark, fn, sets):
    state = {"i": 0}

    def setup():
        s = sets[state["i"] % len(sets)]
        state["i"] += 1
        return s, {}

    benchmark.pedantic(fn, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    return benchmark.stats.stats.median / ITERS


@pytest.mark.parametrize("row", ["official", "fp32", "bf16"])
@pytest.mark.parametrize("preset", PRESETS)
def test_uq_transformer_tokens_per_s(benchmark, env, preset, row):
    benchmark.group = f"put-uq-transformer-{preset}"
    model = _model(preset)
    g = torch.Generator().manual_seed(1)
    codes = env["codes"]
    if row == "official":
        def fn(feats, tokens, known):
            with torch.no_grad():
                official_fill(model, codes, feats, tokens, known, ITERS, TOP_K, 1.0, g)
    else:
        dtype = torch.bfloat16 if row == "bf16" else None

        def fn(feats, tokens, known):
            put_fill(model, codes, feats, tokens, known, top_k=TOP_K, generator=g, autocast_dtype=dtype,
                     max_iterations=ITERS)
    # The GEMM ceiling is re-measured beside each row: the machine is shared and its load drifts.
    D = model.config["dim"]
    gemm = gemm_rate(L, D, 4 * D, torch.bfloat16 if row == "bf16" else torch.float32)
    t = _timed(benchmark, fn, env["sets"])
    _TIMES[(preset, row)] = t
    info = benchmark.extra_info
    info.update(env["machine"])
    info.update({"tokens_per_s": 1.0 / t, "seed_rtx3090_tokens_per_s": SEED_TOKENS_PER_S[preset],
                 "iterations_per_round": ITERS, "tokens": L, "unknown": L // 2})
    if (preset, "official") in _TIMES:
        info["speedup_vs_official"] = _TIMES[(preset, "official")] / t
    info["forward_fraction_of_gemm"] = forward_flops(model, 1, L) / t / gemm
    info["gemm_gflops"] = gemm / 1e9
    if row == "bf16":
        info.update(_bf16_accuracy(model, env))
    print(f"\n[{preset} {row}] {1 / t:.3f} tokens/s (seed RTX 3090: {SEED_TOKENS_PER_S[preset]}) "
          + " ".join(f"{k}={v:.4g}" for k, v in info.items() if isinstance(v, float)))


@torch.no_grad()
def _bf16_accuracy(model: UQTransformer, env) -> dict:
    """Next-token logits bf16-autocast vs fp32 on the rotated inputs, and greedy agreement:
    the argmax token at every unknown position, and the Algorithm-1 position choice."""
    errs, scale, tok_agree, pos_agree, n_tok = [], [], 0, 0, 0
    for feats, _, known in env["sets"]:
        ref = model(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(feats)
        u = ~known[0]
        errs.append((low[0, u] - ref[0, u]).abs().max())
        scale.append(ref[0, u].std())
        tok_agree += int((low[0, u].argmax(-1) == ref[0, u].argmax(-1)).sum())
        n_tok += int(u.sum())
        p_ref = ref.softmax(-1).amax(-1).masked_fill(known, -1).argmax(1)
        p_low = low.softmax(-1).amax(-1).masked_fill(known, -1).argmax(1)
        pos_agree += int((p_ref == p_low).sum())
    return {"bf16_logit_max_abs_err": float(max(errs)), "fp32_logit_std": float(sum(scale) / len(scale)),
            "bf16_greedy_token_agreement": tok_agree / n_tok,
            "bf16_position_choice_agreement": pos_agree / len(env["sets"])}


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_select_and_sample_topk_op(benchmark, env, backend):
    """The selection + top-K draw alone (one Algorithm-1 step on [1, 1024, 512] logits): fused vs reference."""
    benchmark.group = "put-select-and-sample-topk"
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(1, L, V, generator=g) for _ in range(3)]
    sets = [(lg, s[2]) for lg, s in zip(logits, env["sets"])]
    state = {"i": 0}

    def setup():
        state["i"] += 1
        return sets[state["i"] % 3], {}

    benchmark.pedantic(lambda lg, kn: select_and_sample_topk(lg, kn, TOP_K, generator=g, backend=backend),
                       setup=setup, rounds=20, iterations=1, warmup_rounds=2)
    _TIMES[("select", backend)] = benchmark.stats.stats.median
    benchmark.extra_info.update(env["machine"])
    if ("select", "reference") in _TIMES:
        benchmark.extra_info["speedup_vs_reference"] = _TIMES[("select", "reference")] / _TIMES[("select", backend)]


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_pvqvae_images_per_s(benchmark, env, backend, monkeypatch):
    """P-VQVAE (Table 1) at 256x256: encode, dual-codebook quantize, decode with the reference branch."""
    benchmark.group = "put-pvqvae-256"
    if backend == "reference":
        monkeypatch.setenv("VQFAST_BACKEND", "reference")  # every vqfast op runs its PyTorch reference
    torch.manual_seed(0)
    vae = PVQVAE().eval()
    g = torch.Generator().manual_seed(0)
    batch = 2
    sets = []
    for _ in range(3):
        mask = torch.zeros(batch, 256, 256, dtype=torch.bool)
        mask[:, 64:192, 32:160] = True
        sets.append((torch.rand(batch, 3, 256, 256, generator=g) * 2 - 1, mask))
    state = {"i": 0}

    def setup():
        state["i"] += 1
        return sets[state["i"] % 3], {}

    def fn(x, m):
        with torch.no_grad():
            vae(x, m)

    benchmark.pedantic(fn, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    t = benchmark.stats.stats.median
    _TIMES[("pvqvae", backend)] = t
    info = benchmark.extra_info
    info.update(env["machine"])
    info.update({"images_per_s": batch / t, "seed_rtx3090_images_per_s": SEED_IMAGES_PER_S})
    if ("pvqvae", "reference") in _TIMES:
        info["speedup_vs_reference"] = _TIMES[("pvqvae", "reference")] / t
    print(f"\n[pvqvae {backend}] {batch / t:.3f} images/s (seed RTX 3090: {SEED_IMAGES_PER_S})")
