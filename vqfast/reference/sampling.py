"""Oracles for the token samplers: MaskGIT confidence selection, PUT
position selection + top-K Gibbs draw, and guided top-k/top-p categorical sampling.

Every draw is `vqfast.reference.random.categorical` over vqfast's counter-based noise
(vqfast/random.py "Categorical draws"): the draw of row r (flat index of the position)
uses the words of row r of stream STREAM_TOKEN; MaskGIT's confidence noise at position r
is Gumbel element r of stream STREAM_CONFIDENCE. Ties (argmax, selection): the lowest
vocabulary id, the lowest position. Arithmetic is float32 in this order (the kernels
repeat it, so tokens match exactly): guided = u + s * (c - u); x = guided / temperature.
Log-probabilities (confidences, PUT's scores) follow `log_normalizer`, bit for bit on every backend.
"""
from __future__ import annotations

import torch

from vqfast.random import STREAM_CONFIDENCE, STREAM_TOKEN, gumbel, log_f32
from vqfast.reference import random as R

_NEG_INF = float("-inf")
LSE_SHIFT = 40  # fraction bits of the integer softmax terms
MAX_VOCAB = (1 << (63 - LSE_SHIFT)) - 1  # V * 2^40 < 2^63: the int64 sum cannot overflow


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def bad_rows(x: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [...] bool: rows with NaN or +inf, or without any finite value."""
    return torch.isnan(x).any(-1) | (x == float("inf")).any(-1) | (x == _NEG_INF).all(-1)


def log_normalizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., V] float32 (-inf = excluded, a finite max) -> (m, L) [...] float32 with
    log softmax(x)_v = (x_v - m) - L, the same bits on every backend.

    m = max_v x_v; q_v = trunc(exp_f32(x_v - m) * 2^40) (int64, 0 for -inf; exp_f32 <= 1);
    S = sum_v q_v, exact in any order (S < 2^63 for V <= MAX_VOCAB); L = log_f32(float32(S) *
    2^-40) with float32(S) rounded to nearest even. exp_f32 / log_f32 are the shared float32
    routines (vqfast.reference.random.exp_f32, vqfast.random.log_f32). Truncation loses < 2^-40
    per id, so L is log sum_v e^(x_v - m) within V * 2^-40 plus the float32 roundings.
    """
    m = x.amax(-1)
    q = (R.exp_f32(x - m[..., None]) * _f32(2.0 ** LSE_SHIFT)).to(torch.int64)
    return m, log_f32(q.sum(-1).to(torch.float32) * _f32(2.0 ** -LSE_SHIFT))


def _draw(x: torch.Tensor, key: int, rows: torch.Tensor) -> torch.Tensor:
    """x [n, V] float32 (-inf = excluded), rows [n] flat row ids -> draws from softmax(x)."""
    step = max(1, (1 << 20) // x.shape[-1])  # bounds the oracle's memory, not its meaning
    out = [R.categorical(x[r0:r0 + step], key, STREAM_TOKEN, rows[r0:r0 + step]) for r0 in range(0, x.shape[0], step)]
    return torch.cat(out) if out else rows.new_empty(0)


def _rank_desc(score: torch.Tensor) -> torch.Tensor:
    """[..., n] -> rank of each element in (score desc, index asc) order."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(-1, order, torch.arange(score.shape[-1], device=score.device)
                                            .expand_as(order).contiguous())


def gumbel_topk_select(logits: torch.Tensor, masked: torch.Tensor, n_reveal: torch.Tensor, temperature: float,
                       choice: str, banned_ids: torch.Tensor | None, key: int):
    """MaskGIT confidence selection (MaskGIT Sec. 3.2).

    logits [B, L, V], masked [B, L] bool, n_reveal [B] int64 -> tokens [B, L] int64,
    confidence [B, L] fp32, reveal [B, L] bool.
    token = argmax_v x (choice "argmax") or a draw from softmax(x) (choice "sample"), banned
    ids excluded; confidence = ((x[token] - m) - L) + temperature * G_conf (float32, m and L
    from `log_normalizer`) at masked positions, -inf elsewhere; reveal = the n_reveal[b]
    masked positions of largest confidence (ties: lower position).
    """
    B, L, V = logits.shape
    x = logits.float()
    if banned_ids is not None and banned_ids.numel():
        x = x.index_fill(-1, banned_ids, _NEG_INF)
    m, norm = log_normalizer(x)
    rows = torch.arange(B * L, device=x.device)
    if choice == "sample":
        tokens = _draw(x.reshape(B * L, V), key, rows).reshape(B, L)
    else:
        tokens = x.argmax(-1)
    logp = (x.gather(-1, tokens[..., None]).squeeze(-1) - m) - norm
    conf = logp + _f32(temperature) * gumbel(key, STREAM_CONFIDENCE, rows).reshape(B, L)
    conf = conf.masked_fill(~masked, _NEG_INF)
    reveal = (_rank_desc(conf) < n_reveal[:, None]) & masked
    return tokens, conf, reveal


def _topk_keep(x: torch.Tensor, top_k: int) -> torch.Tensor:
    """[n, V] -> bool mask of the top_k largest per row (ties: lower id)."""
    return _rank_desc(x) < top_k


def select_and_sample_topk(logits: torch.Tensor, known: torch.Tensor, top_k: int, n_positions: int,
                           temperature: float, key: int):
    """PUT Algorithm 1 lines 8-14.

    logits [B, L, V], known [B, L] bool -> positions [B, n] int64, tokens [B, n] int64.
    x = logits / temperature; positions: the n unknown positions of largest score
    max_v log softmax(x) = -L (`log_normalizer`; ties: lower position), in that order; tokens: a draw from
    softmax(x) restricted to its top_k ids. Slots beyond a row's unknown count get -1.
    """
    B, L, V = logits.shape
    if L == 0:  # no position to select: every slot holds -1
        none = torch.full((B, n_positions), -1, dtype=torch.long, device=logits.device)
        return none, none.clone()
    x = logits.float() / _f32(temperature)
    score = (-log_normalizer(x)[1]).masked_fill(known, _NEG_INF)
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :n_positions]
    order = torch.cat([order, order.new_zeros(B, n_positions - order.shape[1])], 1)  # n_positions > L
    valid = torch.arange(n_positions, device=x.device)[None, :] < (~known).sum(1, keepdim=True)
    rows = (torch.arange(B, device=x.device)[:, None] * L + order).reshape(-1)
    sel = x.reshape(B * L, V)[rows]
    sel = sel.masked_fill(~_topk_keep(sel, min(top_k, V)), _NEG_INF)
    tokens = _draw(sel, key, rows).reshape(B, n_positions)
    return order.masked_fill(~valid, -1), tokens.masked_fill(~valid, -1)


def _nucleus(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """[n, V] float32 (-inf = excluded, a finite max) -> bool mask of the top-p nucleus.

    In (value desc, id asc) order with integer masses q_v = trunc(exp_f32(x_v - m) * 2^40)
    (`log_normalizer`'s terms; 0 for -inf) and Z = sum_v q_v (exact int64), the id at sorted
    slot i is kept while float64(B_i) < top_p * float64(Z) (one float64 multiply; float64(.)
    rounds to nearest even), B_i = the integer mass before it: (the mass of the larger values)
    + j * q for the j-th of a run of equal values.
    """
    sorted_x, order = torch.sort(x, dim=-1, descending=True, stable=True)
    q = (R.exp_f32(sorted_x - sorted_x[:, :1]) * _f32(2.0 ** LSE_SHIFT)).to(torch.int64)
    goal = top_p * q.sum(-1, keepdim=True).double()
    pos = torch.arange(x.shape[-1], device=x.device).expand_as(sorted_x)
    first = torch.ones_like(sorted_x, dtype=torch.bool)
    first[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    start = torch.where(first, pos, 0).cummax(-1).values  # first sorted slot of each value's run of ties
    greater = (q.cumsum(-1) - q).gather(-1, start)  # the mass of the larger values
    keep_sorted = (greater + (pos - start) * q).double() < goal
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


def sample_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                  cfg_scale: float | None, uncond_logits: torch.Tensor | None, key: int) -> torch.Tensor:
    """Guided, filtered categorical draw. logits [..., V] -> tokens [...] int64.

    x = u + s * (c - u) when cfg_scale is given; temperature 0 -> argmax x (greedy,
    filters irrelevant); else x = x / temperature, keep the top_k largest (ties: lower id),
    then the smallest prefix of the (prob desc, id asc) order whose mass reaches top_p
    (probabilities renormalized over the top-k set; a token is kept when the mass before
    it is below top_p, in the exact integer masses of `_nucleus`), then a draw from softmax
    over the kept ids.
    """
    V = logits.shape[-1]
    x = logits.float().reshape(-1, V)
    if cfg_scale is not None:
        u = uncond_logits.float().reshape(-1, V)
        x = u + _f32(cfg_scale) * (x - u)
    if temperature == 0:
        return x.argmax(-1).reshape(logits.shape[:-1])
    x = x / _f32(temperature)
    if top_k is not None and top_k < V:
        x = x.masked_fill(~_topk_keep(x, top_k), _NEG_INF)
    if top_p is not None and top_p < 1:
        x = x.masked_fill(~_nucleus(x, top_p), _NEG_INF)
    rows = torch.arange(x.shape[0], device=x.device)
    return _draw(x, key, rows).reshape(logits.shape[:-1])
