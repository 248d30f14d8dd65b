"""Token samplers (MaskGIT, PUT, guided top-k / top-p): validation, dispatch, public functions.

Semantics, noise layout and tie rules: vqfast/reference/sampling.py and vqfast/random.py.
Every backend draws the same counter-based noise, so one key gives the same tokens on
the reference, the C++ CPU kernels and the Triton kernels; the confidence ops share one exact
log-softmax rule (reference `log_normalizer`), so their confidences and selections match too.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from vqfast import _backend
from vqfast.random import key_as_int64, philox_key
from vqfast.ops import _dispatch, _validate
from vqfast.reference import sampling as ref

HAS = ("cpu", "triton")  # backends with sampling kernels besides the reference


# ---------------------------------------------------------------- custom ops + dispatch

@torch.library.custom_op("vqfast::gumbel_topk_select", mutates_args=())
def _gumbel_topk_select_op(logits: torch.Tensor, masked: torch.Tensor, n_reveal: torch.Tensor, temperature: float,
                           sample: bool, banned: torch.Tensor, key: int, backend: str
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "cpu":
        return torch.ops.vqfast_cpu.gumbel_topk_select(logits, masked, n_reveal, temperature, sample, banned, key)
    if backend == "triton":
        from vqfast.triton_kernels.sampling import gumbel_topk_select_triton
        return gumbel_topk_select_triton(logits, masked, n_reveal, temperature, sample, banned, key)
    t, c, r = ref.gumbel_topk_select(logits, masked, n_reveal, temperature, "sample" if sample else "argmax",
                                     banned, key % (1 << 64))
    bad = ref.bad_rows(logits.float().index_fill(-1, banned, float("-inf")) if banned.numel() else logits)
    return t.masked_fill(bad, -1), c.masked_fill(bad, float("nan")), r


@_gumbel_topk_select_op.register_fake
def _(logits, masked, n_reveal, temperature, sample, banned, key, backend):
    shape = logits.shape[:2]
    return (logits.new_empty(shape, dtype=torch.long), logits.new_empty(shape, dtype=torch.float32),
            logits.new_empty(shape, dtype=torch.bool))


@torch.library.custom_op("vqfast::select_and_sample_topk", mutates_args=())
def _select_and_sample_topk_op(logits: torch.Tensor, known: torch.Tensor, top_k: int, n_positions: int,
                               temperature: float, key: int, backend: str
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "cpu":
        return torch.ops.vqfast_cpu.select_and_sample_topk(logits, known, top_k, n_positions, temperature, key)
    if backend == "triton":
        from vqfast.triton_kernels.sampling import select_and_sample_topk_triton
        return select_and_sample_topk_triton(logits, known, top_k, n_positions, temperature, key)
    bad = (ref.bad_rows(logits.float() / torch.tensor(temperature, dtype=torch.float32)) & ~known).any(1)
    pos, tok = ref.select_and_sample_topk(logits, known, top_k, n_positions, temperature, key % (1 << 64))
    return pos, tok, bad


@_select_and_sample_topk_op.register_fake
def _(logits, known, top_k, n_positions, temperature, key, backend):
    B = logits.shape[0]
    return (logits.new_empty(B, n_positions, dtype=torch.long), logits.new_empty(B, n_positions, dtype=torch.long),
            logits.new_empty(B, dtype=torch.bool))


@torch.library.custom_op("vqfast::sample_logits", mutates_args=())
def _sample_logits_op(logits: torch.Tensor, uncond: torch.Tensor | None, cfg_scale: float, temperature: float,
                      top_k: int, top_p: float, key: int, backend: str) -> torch.Tensor:
    if backend == "cpu":
        return torch.ops.vqfast_cpu.sample_logits(logits, uncond, cfg_scale, temperature, top_k, top_p, key)
    if backend == "triton":
        from vqfast.triton_kernels.sampling import sample_logits_triton
        return sample_logits_triton(logits, uncond, cfg_scale, temperature, top_k, top_p, key)
    tok = ref.sample_logits(logits, temperature, top_k if top_k > 0 else None, top_p if top_p < 1 else None,
                            cfg_scale if uncond is not None else None, uncond, key % (1 << 64))
    x = logits.float()
    if uncond is not None:
        x = uncond.float() + torch.tensor(cfg_scale, dtype=torch.float32) * (x - uncond.float())
    if temperature > 0:  # a row that overflows to inf by the division is bad, as in the kernels
        x = x / torch.tensor(temperature, dtype=torch.float32)
    return tok.masked_fill(ref.bad_rows(x), -1)


@_sample_logits_op.register_fake
def _(logits, uncond, cfg_scale, temperature, top_k, top_p, key, backend):
    return logits.new_empty(logits.shape[:-1], dtype=torch.long)


# ---------------------------------------------------------------- validation helpers

def _logits(logits, **dims) -> None:
    _validate.tensor("logits", logits, **dims)
    _validate.nonempty("logits", logits, (-1,), "[..., V] with V >= 1")


def _exact_lse_vocab(op: str, V: int, what: str = "log-softmax") -> None:
    """The exact log-softmax and top-p masses (reference `log_normalizer`, `_nucleus`) sum V
    int64 terms of up to 2^40."""
    if V > ref.MAX_VOCAB:
        raise ValueError(f"{op}: logits has V={V} ids, at most {ref.MAX_VOCAB} (2^23 - 1) are supported: "
                         f"the exact {what} sums V integer terms of up to 2^40 in int64")


# ---------------------------------------------------------------- public ops

class GumbelTopkSelection(NamedTuple):
    tokens: torch.Tensor  # [B, L] int64
    confidence: torch.Tensor  # [B, L] fp32, -inf where not masked
    reveal: torch.Tensor  # [B, L] bool, exactly n_reveal[b] True per row


def gumbel_topk_select(logits: torch.Tensor, masked: torch.Tensor, n_reveal: torch.Tensor | int,
                       temperature: float, choice: str = "argmax", banned_ids: Sequence[int] | torch.Tensor | None = None,
                       generator: torch.Generator | None = None, *, seed: int | None = None,
                       backend: str = "auto") -> GumbelTopkSelection:
    """MaskGIT confidence selection (MaskGIT Sec. 3.2), one pass over V per position.

    logits [B, L, V] fp32/fp16/bf16, masked [B, L] bool, n_reveal [B] int (or an int or 0-d
    tensor for every row, 0 <= n_reveal[b] <= masked[b].sum()), temperature >= 0 (the choice
    temperature tau). Returns (tokens [B, L] int64, confidence [B, L] fp32, reveal [B, L] bool):
    token = argmax of the logits ("argmax") or a draw from softmax(logits)
    ("sample"), banned_ids never chosen; confidence = log softmax(logits)[token] + tau * Gumbel
    at masked positions (MaskGIT adds 1e-9 inside the log; vqfast uses the log-probability
    itself), -inf elsewhere; reveal marks exactly n_reveal[b] masked positions of
    largest confidence, ties to the lower position (the anchors' `confidence >= cutoff`
    can reveal more). Tokens are given at every position. Logits with NaN/+inf (or a row
    with no finite value) raise ValueError; V <= 2^23 - 1.
    One float32 rule, the same bits on every backend (so the same reveals): x = logits upcast
    to float32, banned ids -inf; m = max x; S = sum_v trunc(exp_f32(x_v - m) * 2^40) (int64,
    exact in any order); L = log_f32(float32(S) * 2^-40); confidence = ((x[token] - m) - L)
    + tau * G (exp_f32 / log_f32: vqfast/reference/random.py, vqfast/random.py).

        tok, conf, reveal = vqfast.ops.gumbel_topk_select(logits, masked, n, 4.5, "sample", [mask_id], g)
    """
    _logits(logits, dim=3)
    B, L, V = logits.shape
    _exact_lse_vocab("gumbel_topk_select", V)
    masked = _validate.mask("masked", masked, (B, L), logits.device, "logits' [B, L]")
    if not isinstance(n_reveal, torch.Tensor) or n_reveal.dim() == 0:  # one count for every row
        n = _validate.integer("n_reveal", n_reveal)
        n_reveal = torch.full((B,), n, dtype=torch.long, device=logits.device)
    _validate.tensor("n_reveal", n_reveal, dtypes=(torch.int64, torch.int32), dim=1)
    _validate.shape("n_reveal", n_reveal, (B,), "one count per row of logits")
    n_reveal = n_reveal.to(device=logits.device, dtype=torch.long).contiguous()
    _validate.counts_within("n_reveal", n_reveal, masked.sum(1), "masked[b].sum()")
    tau = _validate.real("temperature", temperature, low=0.0)
    choice = _validate.one_of("choice", choice, ("argmax", "sample"))
    banned = _validate.id_set("banned_ids", banned_ids, V, logits.device)
    name = _backend.resolve("gumbel_topk_select", backend, logits.device, has=HAS)
    key = key_as_int64(philox_key(generator, seed))
    args = (logits.detach().contiguous(), masked, n_reveal, tau, choice == "sample", banned, key)
    tokens, conf, reveal = _dispatch.run(_gumbel_topk_select_op, "gumbel_topk_select", args, name)
    _validate.finite_rows("logits", tokens < 0, "positions")
    return GumbelTopkSelection(tokens, conf, reveal)


def select_and_sample_topk(logits: torch.Tensor, known: torch.Tensor, top_k: int, n_positions: int = 1,
                           temperature: float = 1.0, generator: torch.Generator | None = None, *,
                           seed: int | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """PUT Algorithm 1 lines 8-14: pick unknown positions by max-probability, draw each from its top-K.

    logits [B, L, V], known [B, L] bool (True = token already fixed), top_k >= 1 (K_gibbs;
    clamped to V), n_positions >= 1, temperature > 0. Returns positions [B, n] and tokens
    [B, n] (int64): the n unknown positions with the largest max_v softmax(logits /
    temperature) in decreasing order (ties: lower position), each with a draw
    from softmax(logits / temperature) restricted to its top_k ids (ties at the k-th value:
    lower ids). Slots beyond a row's number of unknown positions hold -1 (a row with
    every position known gives all -1). Note: PUT's official code multiplies the logits
    by its temperature; vqfast divides, as the other samplers do. Known positions' logits
    are never read; NaN/+inf at an unknown position raises ValueError; V <= 2^23 - 1.
    The positions' score, one float32 rule with the same bits on every backend (so the same
    order): x = float32(logits) / temperature, m = max x, S = sum_v trunc(exp_f32(x_v - m) * 2^40)
    (int64, exact in any order), score = max_v log softmax(x) = -log_f32(float32(S) * 2^-40).

        pos, tok = vqfast.ops.select_and_sample_topk(logits, known, top_k=50, generator=g)
    """
    _logits(logits, dim=3)
    B, L, V = logits.shape
    _exact_lse_vocab("select_and_sample_topk", V)
    known = _validate.mask("known", known, (B, L), logits.device, "logits' [B, L]")
    top_k = _validate.integer("top_k", top_k, low=1)
    n_positions = _validate.integer("n_positions", n_positions, low=1)
    temperature = _validate.real("temperature", temperature, low=0.0, low_open=True)
    name = _backend.resolve("select_and_sample_topk", backend, logits.device, has=HAS)
    key = key_as_int64(philox_key(generator, seed))
    args = (logits.detach().contiguous(), known, min(top_k, V), n_positions, temperature, key)
    pos, tok, bad = _dispatch.run(_select_and_sample_topk_op, "select_and_sample_topk", args, name)
    _validate.finite_rows("logits", bad, "batch rows with an unknown position")
    return pos, tok


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, cfg_scale: float | None = None,
                  uncond_logits: torch.Tensor | None = None, generator: torch.Generator | None = None, *,
                  seed: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Guided, filtered categorical draw fused in one pass; no probabilities written.

    logits [..., V] (fp32/fp16/bf16) -> tokens [...] int64. With cfg_scale s (needs
    uncond_logits of logits' shape): x = uncond + s * (cond - uncond). temperature 0 is
    greedy: argmax x, lowest id on ties, top_k/top_p ignored. Else x / temperature, keep
    the top_k largest (ties: lower id; top_k >= V keeps all), then the top-p nucleus
    (0 < top_p <= 1), then a categorical draw. NaN/+inf or all -inf rows raise ValueError.
    Nucleus (exact, the same ids on every backend, the reference included): ids in (value
    desc, id asc) order with integer masses q = trunc(exp_f32(x - max x) * 2^40) over the ids
    top-k kept, Z their int64 sum; an id is kept while float64(B) < top_p * float64(Z), B the
    integer mass before it, which for the j-th of a run of equal values is (the mass of the
    larger values) + j * q: equal values count exactly, so 300 equal logits at top_p = 0.1
    keep 30 ids. With top_p < 1 and temperature > 0, V <= 2^23 - 1 (else ValueError).

        tok = vqfast.ops.sample_logits(logits, 0.8, top_k=100, cfg_scale=3.0, uncond_logits=u, generator=g)
    """
    _logits(logits, min_dim=1)
    V = logits.shape[-1]
    temperature = _validate.real("temperature", temperature, low=0.0)
    k = 0 if top_k is None else _validate.integer("top_k", top_k, low=1)
    p = 1.0 if top_p is None else _validate.real("top_p", top_p, low=0.0, low_open=True, high=1.0)
    if p < 1 and temperature > 0:
        _exact_lse_vocab("sample_logits", V, "top-p mass")
    _validate.together(cfg_scale=cfg_scale, uncond_logits=uncond_logits)
    s = 1.0
    uncond = None
    if cfg_scale is not None:
        s = _validate.real("cfg_scale", cfg_scale)
        _validate.tensor("uncond_logits", uncond_logits)
        _validate.shape("uncond_logits", uncond_logits, logits.shape, "logits' shape")
        _validate.same_device(logits=logits, uncond_logits=uncond_logits)
        uncond = uncond_logits.detach().to(logits.dtype).reshape(-1, V).contiguous()
    name = _backend.resolve("sample_logits", backend, logits.device, has=HAS)
    key = key_as_int64(philox_key(generator, seed))
    args = (logits.detach().reshape(-1, V).contiguous(), uncond, s, temperature, k if k < V else 0, p, key)
    tok = _dispatch.run(_sample_logits_op, "sample_logits", args, name)
    _validate.finite_rows("logits", tok.reshape(logits.shape[:-1]) < 0)
    return tok.reshape(logits.shape[:-1])
