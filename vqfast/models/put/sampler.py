"""PUT Algorithm 1 (supp. Sec. 3): pluralistic inpainting with P-VQVAE + UQ-Transformer.

Step 1: f_hat = E(x_hat), tokens t_hat = I(f_hat, e, e', m_down) (visible patches -> e).
Step 2: while unknown positions remain: logits = T(f_hat); among the unknown positions
take the n with the largest max-probability, draw each token from the top-K of its
distribution (temperature), set t_hat[i', j'] = k, mark it known, f_hat[i', j'] = e_k.
Selection and drawing run in `vqfast.ops.select_and_sample_topk` (fused; the (B, L, V)
probabilities are not written).
Step 3: x^I = D(e[t_hat], m, x_hat) (the decoder's reference branch sees the masked image).

    out = put_sample(vae, transformer, images, mask, num_samples=4, top_k=50, generator=0)
    out.tokens, out.images  # [B, 4, h, w], [B, 4, 3, H, W]
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch

from vqfast import ops
from vqfast.ops import _validate
from vqfast.models.common.inference import low_precision
from vqfast.models.put.tokenizer import PVQVAE
from vqfast.progress import progress_bar
from vqfast.random import as_generator


class PUTFill(NamedTuple):
    """`put_fill`: tokens [N, L] int64; mask [N, L] bool (True = still missing: all False when
    finished); order [N, L] int64 (iteration that filled each position; -1 = known at the
    start, -2 = left unfilled); iterations: forward passes run."""
    tokens: torch.Tensor
    mask: torch.Tensor
    order: torch.Tensor
    iterations: int


class PUTSample(NamedTuple):
    """`put_sample`: tokens [B, S, h, w] (S = num_samples; all in e, [0, K), when finished);
    images [B, S, 3, H, W]; order [B, S, h, w] int64: the iteration that filled each position
    (-1 = known, -2 = left unfilled by max_iterations); mask [B, h, w] bool: the tokens
    Algorithm 1 filled (~m_down, patches with a missing pixel); iterations: forward passes run."""
    tokens: torch.Tensor
    images: torch.Tensor
    order: torch.Tensor
    mask: torch.Tensor
    iterations: int


SELECT = ("probability", "logit")


def _check_options(num_samples, top_k, tokens_per_iter, temperature, max_iterations, vocab, select="probability"):
    if select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {select!r}")
    for name, v in (("num_samples", num_samples), ("top_k", top_k), ("tokens_per_iter", tokens_per_iter)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if top_k > vocab:
        raise ValueError(f"top_k must be <= the vocabulary size {vocab}, got {top_k}")
    _validate.real("temperature", temperature, low=0.0, low_open=True)
    if max_iterations is not None and (isinstance(max_iterations, bool) or not isinstance(max_iterations, int)
                                       or max_iterations < 0):
        raise ValueError(f"max_iterations must be a non-negative int or None, got {max_iterations!r}")


def _check_fill_inputs(features, known, mask):
    if not isinstance(features, torch.Tensor) or not features.is_floating_point() or features.dim() != 3:
        got = f"{getattr(features, 'dtype', type(features).__name__)} {tuple(getattr(features, 'shape', ()))}"
        raise ValueError(f"features must be a float tensor [N, L, d], got {got}")
    N, L = features.shape[:2]
    for name, t, dtype in (("known", known, torch.long), ("mask", mask, torch.bool)):
        if not isinstance(t, torch.Tensor) or t.dtype != dtype:
            raise TypeError(f"{name} must be a {dtype} tensor [N, L], got {getattr(t, 'dtype', type(t).__name__)}")
        if tuple(t.shape) != (N, L):
            raise ValueError(f"{name} must have shape [N, L] = {(N, L)} to match features, got {tuple(t.shape)}")
        if t.device != features.device:
            raise ValueError(f"{name} is on {t.device} but features are on {features.device}")


def _select_by_logit(logits, known, top_k, n, temperature, generator, backend):
    """The official code's step 2: the n unknown positions with the largest max logit (not max
    probability), each drawn from its top-K. logits [B, L, V], known [B, L] -> (pos, tok) [B, n]."""
    score = logits.amax(-1).masked_fill(known, float("-inf"))
    pos = score.topk(n, dim=1).indices
    picked = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))
    return pos, ops.sample_logits(picked, temperature=temperature, top_k=top_k, generator=generator, backend=backend)


@torch.no_grad()
def put_fill(transformer, codes, features: torch.Tensor, known: torch.Tensor, mask: torch.Tensor, *,
             top_k: int = 50, tokens_per_iter: int = 1, temperature: float = 1.0,
             generator: torch.Generator | int | None = None, autocast_dtype: torch.dtype | None = None,
             max_iterations: int | None = None, progress: bool = False, backend: str = "auto",
             select: str = "probability") -> PUTFill:
    """Algorithm 1 step 2 on token sequences: fill every missing position, one forward per iteration.

    transformer: features [n, L, d] -> logits [n, L, V]; codes: tokens [n, k] -> vectors [n, k, d]
    (e_k); features [N, L, d] (f_hat); known [N, L] int64 token map (kept where mask is False;
    where it is True, the token a position keeps if max_iterations leaves it unfilled, e.g. its
    e' token); mask [N, L] bool (True = missing: to fill). Inputs are not modified. Options as
    put_sample.

        fill = put_fill(net, vae.codes, enc.features.flatten(1, 2), enc.tokens.flatten(1), enc.mask.flatten(1))
    """
    _check_fill_inputs(features, known, mask)
    _check_options(1, top_k, tokens_per_iter, temperature, max_iterations, transformer.vocab_size, select)
    g = as_generator(generator, features.device)
    feats, toks, kn = features.clone(), known.clone(), ~mask
    order = torch.where(kn, -1, torch.full_like(toks, -2))
    steps = -(-int(mask.sum(1).max()) // tokens_per_iter) if mask.numel() else 0
    if max_iterations is not None:
        steps = min(steps, max_iterations)
    bar = progress_bar(steps, "PUT sampling", progress)
    transformer, autocast_dtype = low_precision(transformer, autocast_dtype, batch_hint=feats.shape[0] * feats.shape[1])
    amp = torch.autocast(feats.device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    it = 0
    # One autocast region for the whole loop (callables without vqfast Blocks): its cache keeps
    # the low-precision weight copies across iterations.
    with amp:
        while it < steps:
            remaining = (~kn).sum(1)
            active = remaining > 0
            rows = active.nonzero().squeeze(1)
            every = bool(active.all())
            # A row never gets more positions than it has left, so each unknown is filled once.
            n = min(tokens_per_iter, int(remaining[rows].min()))
            logits = transformer(feats if every else feats[rows])
            sub_known = kn if every else kn[rows]
            if select == "probability":
                pos, tok = ops.select_and_sample_topk(logits.float(), sub_known, top_k, n_positions=n,
                                                      temperature=temperature, generator=g, backend=backend)
            else:
                pos, tok = _select_by_logit(logits.float(), sub_known, top_k, n, temperature, g, backend)
            r = rows[:, None].expand_as(pos)
            toks[r, pos] = tok
            kn[r, pos] = True
            order[r, pos] = it
            feats[r, pos] = codes(tok).to(feats.dtype)  # Algorithm 1 line 14: f_hat <- e_k
            it += 1
            bar.update(1)
    bar.close()
    return PUTFill(toks, ~kn, order, it)


@torch.no_grad()
def put_sample(vae: PVQVAE, transformer, images: torch.Tensor, mask: torch.Tensor, *, num_samples: int = 1,
               top_k: int = 50, tokens_per_iter: int = 1, temperature: float = 1.0,
               generator: torch.Generator | int | None = None, autocast_dtype: torch.dtype | None = None,
               max_iterations: int | None = None, progress: bool = False, backend: str = "auto",
               select: str = "probability") -> PUTSample:
    """Inpaint `images` where `mask` is True, num_samples completions per image in one batch.

    vae: a PVQVAE; transformer: a UQTransformer over its features (vocab = K tokens of e,
    seq_len = the P-VQVAE's token grid). images [B, 3, H, W] in [-1, 1]; mask bool [B, H, W]
    (True = missing; H, W multiples of r). top_k: K of the Gibbs step; tokens_per_iter:
    positions filled per forward (1 = the paper; more is the official code's speed option);
    temperature divides the logits; generator: torch.Generator, int seed or None (same seed ->
    same completions); autocast_dtype: None runs the transformer in fp32, torch.bfloat16 its
    blocks in bf16; a UQTransformer runs as `vqfast.models.common.inference.inference_copy`
    (on CPU oneDNN-packed block weights, fp32 residual stream, LayerNorms and head), other
    callables as they are (under torch.autocast for bf16); max_iterations: stop after this
    many forward passes (benchmarks; positions left unfilled keep their e' tokens and are
    decoded from e'); progress: a tqdm bar; backend: of select_and_sample_topk; select:
    "probability" ranks the unknown positions by max probability (Algorithm 1 line 10),
    "logit" by max logit (the official code; with it and top_k=1, official-layout weights give
    the official sampler's tokens). A transformer with `token_input` (PUT^tok) starts from the
    quantized vectors of the tokens instead of the features.
    Returns PUTSample(tokens [B, S, h, w], images [B, S, 3, H, W], order, mask, iterations).
    """
    mask = vae.check_images(images, mask)
    _check_options(num_samples, top_k, tokens_per_iter, temperature, max_iterations, transformer.vocab_size, select)
    B, S = images.shape[0], num_samples
    h, w = images.shape[2] // vae.patch, images.shape[3] // vae.patch
    L = h * w
    seq_len = getattr(transformer, "seq_len", L)
    if seq_len != L:
        raise ValueError(f"images give a {h}x{w} token grid ({L} positions) but the transformer has "
                         f"seq_len={seq_len}")
    was = (vae.training, transformer.training)
    vae.eval(), transformer.eval()
    try:
        # Step 1, once per image; the S samples share it.
        enc = vae.encode(images, mask)

        def rep(t):
            return t.reshape(B, 1, L, *t.shape[3:]).expand(B, S, L, *t.shape[3:]).reshape(B * S, L, *t.shape[3:])

        features = vae.codes(enc.tokens) if getattr(transformer, "token_input", False) else enc.features
        fill = put_fill(transformer, vae.codes, rep(features), rep(enc.tokens), rep(enc.mask), top_k=top_k,
                        tokens_per_iter=tokens_per_iter, temperature=temperature, generator=generator,
                        autocast_dtype=autocast_dtype, max_iterations=max_iterations, progress=progress,
                        backend=backend, select=select)
        # Step 3: D(e[t], m, x_hat); positions left unfilled (max_iterations) keep their e' tokens.
        out = vae.decode_tokens(fill.tokens.reshape(B * S, h, w), images.repeat_interleave(S, 0),
                                mask.repeat_interleave(S, 0))
    finally:
        vae.train(was[0]), transformer.train(was[1])
    return PUTSample(fill.tokens.reshape(B, S, h, w), out.reshape(B, S, *out.shape[1:]),
                     fill.order.reshape(B, S, h, w), enc.mask, fill.iterations)
