"""PUT supp. Table 4 side by side: UQ-Transformer tokens/s (Algorithm 1) and P-VQVAE images/s.

Rows, all measured in one run on random-init models of the Table 3 / Table 1 sizes
(L = 32 x 32 = 1024 tokens, half of them unknown, batch 1, a fixed number of
Algorithm-1 iterations so the run stays in minutes on CPU):
  official   the official-style loop: explicit softmax(QK^T)V attention in fp32, a full
             softmax over the vocabulary, a Python top-K filter + torch.multinomial, a
             Python update loop, everything recomputed every iteration
  fp32       vqfast.models.put.put_fill (fused select_and_sample_topk, SDPA attention, the
             transformer's inference copy: on CPU oneDNN-packed fp32 block weights)
  bf16       put_fill(autocast_dtype=torch.bfloat16): the bf16 inference copy (oneDNN-packed
             bf16 block weights, fp32 residual stream, LayerNorms and head; CPU attention
             through bf16 GEMMs)
  bf16-autocast  the same model under plain torch.autocast(bfloat16) (comparison row)
Each row's extra_info holds tokens/s, the paper's RTX 3090 figure (supp. Table 4), the
speedup over the official-style loop on wall time and on process CPU time (with VQFAST_BENCH_THREADS=1 the
CPU-time ratio is the one the machine's load disturbs least), the forward's FLOP/s as a
fraction of this machine's GEMM rate for its dtype (an [L, D] x [D, 4D] matmul in fp32 and
bf16 timed beside the row, through torch.mm = MKL and through oneDNN on a packed weight:
on AMD CPUs MKL's sgemm runs at less than half of oneDNN's fp32 rate), the greedy
agreement of the packed fp32 copy with the plain model and, for bf16, the logit error and greedy agreement against fp32
(next-token argmax at every unknown position and at the quarter of them fp32 is most
confident about, where greedy steps pick, and Algorithm 1's position choice, on identical
inputs).

On a CUDA machine the rows run on the GPU (PUT_BENCH_DEVICE=cpu|cuda overrides), timed
with a synchronize after each round; the GEMM ceiling is then the GPU's torch.mm rate.

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

from vqfast.models.common.inference import inference_copy
from vqfast.models.put import PVQVAE, UQTransformer, put_fill
from vqfast.ops.sampling import select_and_sample_topk
from timing import gemm_rate, machine, sync  # noqa: E402  (benchmarks/ is on sys.path under pytest)

# PUT supp. Table 4 (RTX 3090).
PAPER_TOKENS_PER_S = {"ffhq": 37.138, "places2": 32.048, "imagenet": 17.186}
PAPER_IMAGES_PER_S = 62.949

PRESETS = [p for p in os.environ.get("PUT_BENCH_PRESETS", "ffhq,places2,imagenet").split(",") if p]
ITERS = int(os.environ.get("PUT_BENCH_ITERS", "1"))     # Algorithm-1 iterations per timed round
ROUNDS = int(os.environ.get("PUT_BENCH_ROUNDS", "3"))   # rounds, one input set each (rotated)
TOP_K, L, V, D_FEAT = 50, 1024, 512, 256
DEVICE = torch.device(os.environ.get("PUT_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
if os.environ.get("VQFAST_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["VQFAST_BENCH_THREADS"]))

# (preset, row) -> (wall, cpu) s per iteration; ("select" / "pvqvae", backend) -> wall s; this run
_TIMES: dict[tuple[str, str], object] = {}


def forward_flops(model: UQTransformer, batch: int, length: int) -> float:
    """Matmul FLOPs of one forward: projections + MLP + attention (QK^T and PV) + embedding + head."""
    c = model.config
    D, n = c["dim"], c["depth"]
    per_token = n * (4 * D * D + 2 * c["mlp_ratio"] * D * D) + c["feature_dim"] * D + D * c["vocab_size"]
    return 2 * batch * length * per_token + 4 * batch * n * length * length * D


def official_forward(model: UQTransformer, feats: torch.Tensor) -> torch.Tensor:
    """The official-style transformer forward: separate q/k/v GEMMs, explicit fp32 softmax(QK^T / sqrt(D'))V."""
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
    """The official-style sampling loop (max-probability position, Python top-K filter, multinomial)."""
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
        feats, tokens = torch.randn(1, L, D_FEAT, generator=g).relu(), torch.randint(0, V, (1, L), generator=g)
        sets.append((feats.to(DEVICE), tokens.to(DEVICE), known.to(DEVICE)))
    return sets, torch.randn(V, D_FEAT, generator=g).relu().to(DEVICE)


@pytest.fixture(scope="module")
def env():
    sets, codebook = _inputs()
    return {"sets": sets, "codes": lambda t: F.embedding(t, codebook), "machine": machine()}


_MODELS: dict[str, UQTransformer] = {}


def _model(preset: str) -> UQTransformer:
    if preset not in _MODELS:
        _MODELS.clear()  # one preset in memory at a time
        torch.manual_seed(0)
        _MODELS[preset] = UQTransformer.from_preset(preset, device=DEVICE).eval()
    return _MODELS[preset]


def _timed(benchmark, fn, sets):
    """(wall, CPU-time) median seconds per Algorithm-1 iteration, input sets rotated."""
    state, cpu = {"i": 0}, []

    def setup():
        s = sets[state["i"] % len(sets)]
        state["i"] += 1
        return s, {}

    def timed(*args):
        c0 = time.process_time()
        fn(*args)
        sync(DEVICE)
        cpu.append(time.process_time() - c0)

    benchmark.pedantic(timed, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    cpu = cpu[1:]  # the warm-up round
    return benchmark.stats.stats.median / ITERS, sorted(cpu)[len(cpu) // 2] / ITERS


class _Autocast:
    """The model under plain torch.autocast (put_fill sees no vqfast Blocks): the comparison row."""

    def __init__(self, model):
        self.model, self.vocab_size = model, model.vocab_size

    def __call__(self, feats):
        return self.model(feats)


@pytest.mark.parametrize("row", ["official", "fp32", "bf16", "bf16-autocast"])
@pytest.mark.parametrize("preset", PRESETS)
def test_uq_transformer_tokens_per_s(benchmark, env, preset, row):
    benchmark.group = f"put-uq-transformer-{preset}"
    model = _model(preset)
    g = torch.Generator(DEVICE).manual_seed(1)
    codes = env["codes"]
    if row == "official":
        def fn(feats, tokens, known):
            with torch.no_grad():
                official_fill(model, codes, feats, tokens, known, ITERS, TOP_K, 1.0, g)
    else:
        dtype = torch.bfloat16 if row.startswith("bf16") else None
        net = _Autocast(model) if row == "bf16-autocast" else model

        def fn(feats, tokens, known):
            put_fill(net, codes, feats, tokens, ~known, top_k=TOP_K, generator=g, autocast_dtype=dtype,
                     max_iterations=ITERS)
    # The GEMM ceiling is re-measured beside each row: the machine is shared and its load drifts.
    D = model.config["dim"]
    dtypes = (("fp32", torch.float32), ("bf16", torch.bfloat16))
    gemm = {name: gemm_rate(L, D, 4 * D, dt, device=DEVICE) for name, dt in dtypes}
    packed = {name: gemm_rate(L, D, 4 * D, dt, packed=True) for name, dt in dtypes} if DEVICE.type == "cpu" else gemm
    t, cpu = _timed(benchmark, fn, env["sets"])
    _TIMES[(preset, row)] = (t, cpu)
    info = benchmark.extra_info
    info.update(env["machine"])
    info.update({"tokens_per_s": 1.0 / t, "paper_rtx3090_tokens_per_s": PAPER_TOKENS_PER_S[preset],
                 "iterations_per_round": ITERS, "tokens": L, "unknown": L // 2, "cpu_s_per_iteration": cpu})
    if (preset, "official") in _TIMES:
        info["speedup_vs_official"] = _TIMES[(preset, "official")][0] / t
        info["cpu_time_speedup_vs_official"] = _TIMES[(preset, "official")][1] / cpu
    kind = "bf16" if row.startswith("bf16") else "fp32"
    mine, mine_packed = gemm[kind], packed[kind]
    info["forward_fraction_of_gemm"] = forward_flops(model, 1, L) / t / mine[0]
    info["cpu_time_forward_fraction_of_gemm"] = forward_flops(model, 1, L) / cpu / mine[1]
    info["forward_fraction_of_packed_gemm"] = forward_flops(model, 1, L) / t / mine_packed[0]
    info["gemm_gflops"] = mine[0] / 1e9
    info["packed_gemm_gflops"] = mine_packed[0] / 1e9
    info["bf16_over_fp32_gemm"] = gemm["bf16"][1] / gemm["fp32"][1]
    if row == "bf16":
        info.update(_bf16_accuracy(model, env))
    if row == "fp32":
        info.update(_fp32_agreement(model, env))
    print(f"\n[{preset} {row}] {1 / t:.3f} tokens/s (paper, RTX 3090: {PAPER_TOKENS_PER_S[preset]}) "
          + " ".join(f"{k}={v:.4g}" for k, v in info.items() if isinstance(v, float)))


@torch.no_grad()
def _bf16_accuracy(model: UQTransformer, env) -> dict:
    """Next-token logits bf16 (the low-precision copy put_fill runs; and plain autocast) vs fp32
    on the rotated inputs, and greedy agreement: the argmax token at every unknown position,
    and the Algorithm-1 position choice."""
    fast = inference_copy(model, torch.bfloat16, batch_hint=L)
    errs, scale, tok_agree, pos_agree, n_tok, amp_agree, top_agree, n_top = [], [], 0, 0, 0, 0, 0, 0
    for feats, _, known in env["sets"]:
        ref = model(feats)
        low = fast(feats)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            amp = model(feats)
        u = ~known[0]
        errs.append((low[0, u] - ref[0, u]).abs().max())
        scale.append(ref[0, u].std())
        tok_agree += int((low[0, u].argmax(-1) == ref[0, u].argmax(-1)).sum())
        amp_agree += int((amp[0, u].argmax(-1) == ref[0, u].argmax(-1)).sum())
        n_tok += int(u.sum())
        # the quarter of unknown positions fp32 is most confident about: where Algorithm 1's
        # greedy steps pick next, so their token choices (near-ties are rare there)
        conf = ref[0, u].softmax(-1).amax(-1)
        top = conf.topk(max(1, conf.numel() // 4)).indices
        top_agree += int((low[0, u][top].argmax(-1) == ref[0, u][top].argmax(-1)).sum())
        n_top += top.numel()
        p_ref = ref.softmax(-1).amax(-1).masked_fill(known, -1).argmax(1)
        p_low = low.softmax(-1).amax(-1).masked_fill(known, -1).argmax(1)
        pos_agree += int((p_ref == p_low).sum())
    return {"bf16_logit_max_abs_err": float(max(errs)), "fp32_logit_std": float(sum(scale) / len(scale)),
            "bf16_greedy_token_agreement": tok_agree / n_tok,
            "bf16_autocast_greedy_token_agreement": amp_agree / n_tok,
            "bf16_top_quarter_confidence_token_agreement": top_agree / n_top,
            "bf16_position_choice_agreement": pos_agree / len(env["sets"])}


@torch.no_grad()
def _fp32_agreement(model: UQTransformer, env) -> dict:
    """The fp32 inference copy put_fill runs vs the plain model on the rotated inputs: logit
    error and argmax agreement at the unknown positions, Algorithm 1's position choice."""
    fast = inference_copy(model, None, batch_hint=L)
    err, tok, n, pos = 0.0, 0, 0, 0
    for feats, _, known in env["sets"]:
        ref, got = model(feats), fast(feats)
        u = ~known[0]
        err = max(err, float((got[0, u] - ref[0, u]).abs().max()))
        tok += int((got[0, u].argmax(-1) == ref[0, u].argmax(-1)).sum())
        n += int(u.sum())
        choose = [x.softmax(-1).amax(-1).masked_fill(known, -1).argmax(1) for x in (ref, got)]
        pos += int((choose[0] == choose[1]).sum())
    return {"packed_fp32_logit_max_abs_err": err, "packed_fp32_greedy_token_agreement": tok / n,
            "packed_fp32_position_choice_agreement": pos / len(env["sets"])}


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_select_and_sample_topk_op(benchmark, env, backend):
    """The selection + top-K draw alone (one Algorithm-1 step on [1, 1024, 512] logits): fused vs reference."""
    benchmark.group = "put-select-and-sample-topk"
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(1, L, V, generator=g).to(DEVICE) for _ in range(3)]
    g = torch.Generator(DEVICE).manual_seed(0)
    sets = [(lg, s[2]) for lg, s in zip(logits, env["sets"])]
    state = {"i": 0}

    def setup():
        state["i"] += 1
        return sets[state["i"] % 3], {}

    def select(lg, kn):
        select_and_sample_topk(lg, kn, TOP_K, generator=g, backend=backend)
        sync(DEVICE)

    benchmark.pedantic(select,
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
    vae = PVQVAE.from_preset("paper").to(DEVICE).eval()
    g = torch.Generator().manual_seed(0)
    batch = 2
    sets = []
    for _ in range(3):
        mask = torch.zeros(batch, 256, 256, dtype=torch.bool)
        mask[:, 64:192, 32:160] = True
        sets.append(((torch.rand(batch, 3, 256, 256, generator=g) * 2 - 1).to(DEVICE), mask.to(DEVICE)))
    state = {"i": 0}

    def setup():
        state["i"] += 1
        return sets[state["i"] % 3], {}

    def fn(x, m):
        with torch.no_grad():
            vae(x, m)
        sync(DEVICE)

    benchmark.pedantic(fn, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    t = benchmark.stats.stats.median
    _TIMES[("pvqvae", backend)] = t
    info = benchmark.extra_info
    info.update(env["machine"])
    info.update({"images_per_s": batch / t, "paper_rtx3090_images_per_s": PAPER_IMAGES_PER_S})
    if ("pvqvae", "reference") in _TIMES:
        info["speedup_vs_reference"] = _TIMES[("pvqvae", "reference")] / t
    print(f"\n[pvqvae {backend}] {batch / t:.3f} images/s (paper, RTX 3090: {PAPER_IMAGES_PER_S})")
