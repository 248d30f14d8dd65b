"""Stackformer sampling (MQ-VAE, Huang et al., CVPR 2023; official `ClassTransformer.sample`).

Step i: code v_i from the Code-Transformer's logits (top-k 100, top-p 0.95), then
position p_i from the Position-Transformer's logits given v_i (top-k 10, top-p 0.95),
positions already used and the start token (id HW) set to -inf before the draw, so no
position is drawn twice. Stackformer_r (`reversed`) draws the position first. Every draw
goes through `vqfast.ops.sample_logits` (temperature, top-k, top-p, one categorical
draw per row); the generator (a torch.Generator, or an int seed: a generator seeded with
it) gives one Philox key per call and draw j of step i uses `vqfast.random.step_key(key,
2i + j)`, so a seed fixes the samples and a continuation of the first m pairs of a sample
(same seed) redraws the rest of that sample.

KV cache (`use_cache=True`): each stack keeps preallocated keys [layers, B, H, Dh, n]
(transposed) and values [layers, B, H, n, Dh] (`vqfast.models.mqvae.stackformer.KVCache`); a step
runs one token through each stack and writes its keys/values in place. `use_cache=False`
recomputes the whole prefix of both stacks at every step, as the official sampler does
(it even runs the Code-Transformer twice per step). Both paths draw from the same
keys: in fp32 they give the same tokens up to floating-point rounding of the logits
(tests check token-for-token equality at the tiny size).

Editing / inpainting: `prefix_codes`, `prefix_positions` [B, m] (the same m for every
row) are kept as the first m pairs, the model is run over them once (one cached pass)
and pairs m .. num_tokens - 1 are sampled; their positions are never drawn again.
- in distribution: a raster prefix of a real sequence (MQVAE.encode's first m pairs):
  everything above / left of a raster cut is kept and the rest is resampled
  (outpainting in raster order), or a new class label on such a prefix (editing);
- accepted but out of distribution: any other set of kept pairs (e.g. a region in
  the middle, or pairs in a non-raster order): the model was trained on sequences
  whose later positions follow the earlier ones, so it is likely to place the new pairs
  after the last kept one;
- not supported: per-row prefix lengths, and resampling codes at fixed positions
  (the position is predicted after its code, so there is no p(v | p) to draw from).

    out = stackformer_sample(net, batch_size=4, class_labels=torch.tensor([1, 2, 3, 4]), generator=0)
    images = mqvae.decode_tokens(out.tokens, out.positions)
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from vqfast import ops
from vqfast.models.common.inference import inference_copy
from vqfast.models.mqvae.stackformer import Stackformer, run_causal
from vqfast.progress import progress_bar
from vqfast.random import as_generator, philox_key, step_key


class StackformerSample(NamedTuple):
    """`stackformer_sample`: tokens (code ids) [B, n] and positions [B, n] int64, in sampling order."""

    tokens: torch.Tensor
    positions: torch.Tensor


def _check_filter(name: str, v, kind: str) -> None:
    if v is None:
        return
    if kind == "k" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"{name} must be a positive int or None, got {v!r}")
    if kind == "p" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1):
        raise ValueError(f"{name} must lie in (0, 1] or be None, got {v!r}")


@torch.no_grad()
def stackformer_sample(model: Stackformer, *, batch_size: int, num_tokens: int | None = None,
                       class_labels: torch.Tensor | int | None = None, code_top_k: int | None = 100,
                       code_top_p: float | None = 0.95, position_top_k: int | None = 10,
                       position_top_p: float | None = 0.95, temperature: float = 1.0,
                       generator: torch.Generator | int | None = None, use_cache: bool = True,
                       prefix_codes: torch.Tensor | None = None, prefix_positions: torch.Tensor | None = None,
                       backend: str = "auto", progress: bool = False,
                       autocast_dtype: torch.dtype | None = None) -> StackformerSample:
    """batch_size sequences of num_tokens (code, position) pairs -> StackformerSample(tokens [B, n],
    positions [B, n]).

    num_tokens: default min(model.max_len, model.num_positions); class_labels: [B] int64 or an
    int for every sample (class-conditional models only); top-k / top-p per head (None: off);
    temperature divides the logits (0: greedy); generator: torch.Generator, int seed or None;
    use_cache: KV cache (False: the official full recomputation); prefix_codes /
    prefix_positions [B, m]: kept pairs (see the module docstring); backend: of
    `vqfast.ops.sample_logits`; progress: tqdm bar; autocast_dtype: None runs in fp32, e.g.
    torch.bfloat16 runs the blocks from a cached bf16-weight copy (fp32 residual stream,
    embeddings, LayerNorms and heads); on CPU both run oneDNN-packed block weights
    (`vqfast.models.common.inference.inference_copy`).
    Positions of a sample are distinct; the order of the pairs is the sampling order.
    """
    was_training = getattr(model, "training", False)
    try:
        run = StackformerDecoding(model, batch_size=batch_size, num_tokens=num_tokens, class_labels=class_labels,
                                  code_top_k=code_top_k, code_top_p=code_top_p, position_top_k=position_top_k,
                                  position_top_p=position_top_p, temperature=temperature, generator=generator,
                                  use_cache=use_cache, prefix_codes=prefix_codes, prefix_positions=prefix_positions,
                                  backend=backend, autocast_dtype=autocast_dtype)
        bar = progress_bar(run.num_tokens - run.num_prefix, "Stackformer sampling", progress, unit="token")
        run.prefill()
        for i in range(run.num_prefix, run.num_tokens):
            run.step(i)
            bar.update(1)
        bar.close()
    finally:
        if isinstance(model, Stackformer):
            model.train(was_training)
    return StackformerSample(run.tokens["code"], run.tokens["position"])


class StackformerDecoding:
    """The state of one `stackformer_sample` run (arguments as there): tokens {"code",
    "position"} [B, n], used positions [B, HW + 1], KV caches. `prefill()` runs the kept
    prefix through the caches, `step(i)` draws pair i (i = num_prefix .. num_tokens - 1, in
    order). Puts `model` in eval mode. Benchmarks time `step` alone through it."""

    @torch.no_grad()
    def __init__(self, model: Stackformer, *, batch_size: int, num_tokens: int | None = None, class_labels=None,
                 code_top_k: int | None = 100, code_top_p: float | None = 0.95, position_top_k: int | None = 10,
                 position_top_p: float | None = 0.95, temperature: float = 1.0, generator=None,
                 use_cache: bool = True, prefix_codes: torch.Tensor | None = None,
                 prefix_positions: torch.Tensor | None = None, backend: str = "auto",
                 autocast_dtype: torch.dtype | None = None):
        if not isinstance(model, Stackformer):
            raise ValueError(f"model must be a Stackformer, got {type(model).__name__}")
        _check_filter("code_top_k", code_top_k, "k"), _check_filter("position_top_k", position_top_k, "k")
        _check_filter("code_top_p", code_top_p, "p"), _check_filter("position_top_p", position_top_p, "p")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        longest = min(model.max_len, model.num_positions)  # one pair per position
        n = longest if num_tokens is None else num_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= longest:
            raise ValueError(f"num_tokens must be an int in [1, min(max_len, num_positions) = {longest}], "
                             f"got {num_tokens!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        device = model.code_emb.weight.device
        B, HW = batch_size, model.num_positions
        if isinstance(class_labels, int) and not isinstance(class_labels, bool):
            class_labels = torch.full((B,), class_labels, dtype=torch.long, device=device)
        start = model.start_ids(class_labels, B, device)
        if (prefix_codes is None) != (prefix_positions is None):
            raise ValueError("prefix_codes and prefix_positions go together: pass both or neither")
        m = 0
        if prefix_codes is not None:
            model.check_tokens(prefix_codes, prefix_positions, max_len=n, names=("prefix_codes", "prefix_positions"))
            if prefix_codes.shape[0] != B:
                raise ValueError(f"prefix_codes must have batch_size={B} rows, got shape {tuple(prefix_codes.shape)}")
            m = prefix_codes.shape[1]
        model.eval()
        # a Stackformer is built from vqfast Blocks: a cached inference copy (no autocast)
        self.net = inference_copy(model, autocast_dtype, B)
        self.num_tokens, self.num_prefix, self.use_cache = n, m, bool(use_cache)
        self.temperature = float(temperature)
        self.filters = {"code": (code_top_k, code_top_p), "position": (position_top_k, position_top_p)}
        self.base_key = philox_key(as_generator(generator, device))
        self.backend = backend
        self.tokens = {"code": torch.zeros(B, n, dtype=torch.long, device=device),
                       "position": torch.full((B, n), model.start_position, dtype=torch.long, device=device)}
        self.used = torch.zeros(B, HW + 1, dtype=torch.bool, device=device)
        self.used[:, HW] = True  # the start token is never a position
        if m:
            self.tokens["code"][:, :m] = prefix_codes.to(device)
            self.tokens["position"][:, :m] = prefix_positions.to(device)
            self.used.scatter_(1, prefix_positions.to(device), True)
        # inputs of every step (E_v rows, position ids); entries after the prefix are set as pairs are drawn
        self.prev_ids, self.prev_pos = self.net.shifted(self.tokens["code"], self.tokens["position"], start)
        dtype = self.net.code_blocks[0].attn.qkv.weight.dtype
        self.caches = self.net.new_caches(B, n, dtype, device) if self.use_cache else None

    def draw(self, kind: str, logits: torch.Tensor, step: int) -> torch.Tensor:
        """One token per row from logits [B, V]: used positions and the start token set to -inf."""
        logits = logits.float()
        if kind == "position":
            logits = logits.masked_fill(self.used, float("-inf"))
        top_k, top_p = self.filters[kind]
        # one key per (step, head): a continuation of a prefix draws what the full run drew
        key = step_key(self.base_key, 2 * step + (kind == self.net.stacks[1]))
        return ops.sample_logits(logits, self.temperature, top_k=top_k, top_p=top_p, seed=key, backend=self.backend)

    @torch.no_grad()
    def prefill(self) -> None:
        """One pass over the kept prefix fills both caches (nothing to do without cache or prefix)."""
        m, net = self.num_prefix, self.net
        if not (self.use_cache and m):
            return
        first, second = net.stacks
        h = run_causal(net.blocks(first), net.inputs(self.prev_ids[:, :m], self.prev_pos[:, :m]), self.caches[0])
        run_causal(net.blocks(second), net.second_input(first, h, self.tokens[first][:, :m]), self.caches[1])

    @torch.no_grad()
    def step(self, i: int) -> None:
        """Draw pair i: the first stack's token, then the second's given it."""
        net, tokens = self.net, self.tokens
        first, second = net.stacks
        if i:  # the pair drawn at step i - 1 is the input of step i
            self.prev_ids[:, i] = tokens["code"][:, i - 1] + net.num_starts
            self.prev_pos[:, i] = tokens["position"][:, i - 1]
        if self.use_cache:
            x = net.inputs(self.prev_ids[:, i:i + 1], self.prev_pos[:, i:i + 1], i)
            h = run_causal(net.blocks(first), x, self.caches[0])[:, -1]
            tokens[first][:, i] = tok = self.draw(first, net.logits(first, h), i)
            out = run_causal(net.blocks(second), net.second_input(first, h, tok)[:, None], self.caches[1])[:, -1]
        else:  # the official way: both stacks over the whole prefix
            h = run_causal(net.blocks(first), net.inputs(self.prev_ids[:, :i + 1], self.prev_pos[:, :i + 1]))
            tokens[first][:, i] = self.draw(first, net.logits(first, h[:, -1]), i)
            out = run_causal(net.blocks(second), net.second_input(first, h, tokens[first][:, :i + 1]))[:, -1]
        tokens[second][:, i] = self.draw(second, net.logits(second, out), i)
        self.used.scatter_(1, tokens["position"][:, i:i + 1], True)
