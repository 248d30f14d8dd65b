"""Draft-and-Revise decoding for the Contextual RQ-Transformer (Lee et al., NeurIPS 2022,
Algorithm 1; supp. A.4, C, D.3).

UPDATE(S, Pi): Pi is a uniformly random balanced partition of the positions to generate
into T groups (sizes differ by at most one); for t = 1..T every position of group t is
hidden ([MASK], the whole stack) and resampled from p(S_n | S without group t): one
spatial pass for the batch, then the D codes of each resampled position drawn
autoregressively with the cached depth transformer.
- draft: start from all [MASK], one UPDATE with T_draft groups (positions of later
  groups are still [MASK] when a group is drawn);
- revise: M UPDATEs with T_revise groups each, over the same positions.
Temperature and classifier-free guidance are set per phase (paper: none in the draft,
temperature 0.8 and guidance in the revise phase). Guidance mixes logits per depth step:
uncond + s * (cond - uncond), the unconditional rows using the null class and the same
codes; s = 1 is the conditional model alone (no extra pass), s = 0 the unconditional one.

Inpainting / editing (supp. D.3): give `known` codes and `mask` (True = generate): only the
masked positions are partitioned and resampled, the given stacks are kept; editing is
inpainting with another class label. Draft strategies (supp. C): "random" (the paper's),
"top-c" (MaskGIT: reveal the most confident of the sampled stacks, confidence = sum over
depths of log p of the drawn codes) and "top-c-50" (drop the less confident half, then
reveal uniformly at random among the rest); each reveals as many positions per step as
the random partition would. The revise phase always uses random partitions.

Every draw goes through `vqfast.ops.sample_logits` (fused guidance, temperature, top-k/p, Gumbel-max); partitions use `generator` too, so
the same seed gives the same codes. `depth_cache=False` recomputes the full model
(spatial + depth) for every depth step: the naive baseline, equal in distribution and,
for the same seed, equal up to floating-point rounding.

PAPER_SETTINGS holds the supp. A.4 settings per model size:
    codes = draft_and_revise(net, batch_size=4, class_labels=y, generator=0, **PAPER_SETTINGS["821M"]).tokens
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from vqfast.ops import _validate
from vqfast.random import as_generator
from vqfast.ops.sampling import sample_logits
from vqfast.models.common.checks import check_batch_size

PAPER_SETTINGS: dict[str, dict] = {  # supp. A.4 (ImageNet); T_draft = 64 (main paper)
    "371M": dict(T_draft=64, T_revise=2, M=3, revise_temperature=0.8, revise_guidance=1.4),
    "821M": dict(T_draft=64, T_revise=2, M=2, revise_temperature=0.8, revise_guidance=1.8),
    "1.4B": dict(T_draft=64, T_revise=2, M=2, revise_temperature=0.8, revise_guidance=2.0),
}
STRATEGIES = ("random", "top-c", "top-c-50")


@dataclass
class Step:
    """One UPDATE step of the history: phase ("draft" | "revise"), round (0 for the
    draft, 1..M in the revise phase), group t, the positions resampled (bool [B, H, W])
    and the codes after the step ([B, H, W, D])."""

    phase: str
    round: int
    group: int
    updated: torch.Tensor
    codes: torch.Tensor


class RQSample(NamedTuple):
    """`draft_and_revise`'s result: tokens, the code maps [B, H, W, D], and with
    return_history the list of UPDATE steps (`Step`), None otherwise."""

    tokens: torch.Tensor
    history: list[Step] | None = None


def random_partition(region: torch.Tensor, groups: int, generator=None) -> torch.Tensor:
    """Uniformly random balanced partition of each row's True positions into `groups` groups.

    region bool [B, N] -> int64 [B, N]: group id in 0..groups-1 (group sizes of a row
    differ by at most one), -1 outside the region.

        random_partition(torch.ones(1, 8, dtype=torch.bool), 4, generator=0)  # each id twice
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    g = as_generator(generator)
    B, N = region.shape
    score = torch.rand(B, N, generator=g).to(region.device).masked_fill(~region, 2.0)
    rank = score.argsort(1).argsort(1)  # uniform random order of the region, region first
    n = region.sum(1, keepdim=True).clamp_min(1)
    return torch.where(region, rank * groups // n, torch.full_like(rank, -1))


class _Sampler:
    """The per-step machinery shared by both phases (one instance per call)."""

    def __init__(self, model, labels, generator, top_k, top_p, depth_cache, backend="auto"):
        self.model, self.labels, self.g = model, labels, generator
        self.top_k, self.top_p, self.depth_cache, self.backend = top_k, top_p, depth_cache, backend
        self.null = getattr(model, "num_classes", 0)

    def _inputs(self, codes, hidden, guidance):
        """Batch for the model: conditional rows, then null-class rows when guiding."""
        guided = self.labels is not None and guidance != 1.0
        if not guided:
            return codes, hidden, self.labels, False
        null = torch.full_like(self.labels, self.null)
        return (torch.cat([codes, codes]), torch.cat([hidden, hidden]), torch.cat([self.labels, null]), True)

    def _pick(self, logits, guided, temperature, guidance, confidence):
        if guided:
            cond, uncond = logits.float().chunk(2)
        else:
            cond, uncond = logits.float(), None
        code = sample_logits(cond, temperature=temperature, top_k=self.top_k, top_p=self.top_p,
                             cfg_scale=guidance if guided else None, uncond_logits=uncond, generator=self.g,
                             backend=self.backend)
        if confidence is not None:  # log p of the drawn code under the guided, tempered distribution
            mixed = cond if uncond is None else uncond + guidance * (cond - uncond)
            logp = torch.log_softmax(mixed / temperature, -1)
            confidence += logp.gather(-1, code[:, None])[:, 0]
        return code

    def stacks(self, codes, hidden, rows, temperature, guidance, with_confidence=False):
        """New stacks [m, D] for the positions `rows` (bool [B, N]) given codes [B, N, D]
        with `hidden` (bool [B, N]) stacks masked; also their confidence [m] if asked."""
        m = self.model
        B, N, D = codes.shape
        H, W = m.grid
        c2, h2, lab, guided = self._inputs(codes, hidden, guidance)
        conf = torch.zeros(int(rows.sum()), device=codes.device) if with_confidence else None
        sel = torch.cat([rows, rows]) if guided else rows
        if self.depth_cache:
            h = m.spatial_forward(c2.view(-1, H, W, D), h2.view(-1, H, W), lab)[sel]
            return m.sample_stacks(h, lambda d, lg: self._pick(lg, guided, temperature, guidance, conf)), conf
        work = c2.clone()  # naive: the whole model again for every depth step
        for d in range(D):
            logits = m(work.view(-1, H, W, D), h2.view(-1, H, W), lab).view(-1, N, D, m.codebook_size)
            code = self._pick(logits[sel][:, d], guided, temperature, guidance, conf)
            work[sel, d] = code.repeat(2 if guided else 1)
        return work[: B][rows], conf


def _prepare(model, known, mask, batch_size, class_labels, device):
    if known is None:
        if batch_size is None and mask is None:
            raise ValueError("give known (+ mask) to inpaint, or batch_size to generate")
        check_batch_size(batch_size)
        n = batch_size if batch_size is not None else mask.shape[0]
        known = torch.zeros(n, *model.code_shape, dtype=torch.long, device=device)
        if mask is None:
            mask = torch.ones(n, *model.grid, dtype=torch.bool, device=device)
    elif mask is None:
        raise ValueError("known given without mask: nothing to generate (mask True = generate)")
    if not isinstance(known, torch.Tensor) or known.dtype != torch.long:
        raise TypeError(f"known must be an int64 tensor of codes, got {getattr(known, 'dtype', type(known))}")
    if known.dim() != 4 or tuple(known.shape[1:]) != model.code_shape or known.shape[0] == 0:
        raise ValueError(f"known codes must be [B >= 1, {', '.join(map(str, model.code_shape))}], "
                         f"got {tuple(known.shape)}")
    if batch_size is not None and batch_size != known.shape[0]:
        raise ValueError(f"batch_size={batch_size!r} disagrees with known's batch {known.shape[0]}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
    if tuple(mask.shape) != tuple(known.shape[:3]):
        raise ValueError(f"mask must be [B, H, W] = {tuple(known.shape[:3])}, got {tuple(mask.shape)}")
    given = known[~mask]
    if given.numel() and (given.min() < 0 or given.max() >= model.codebook_size):
        raise ValueError(f"known codes outside the mask must lie in [0, {model.codebook_size}), "
                         f"got range [{int(given.min())}, {int(given.max())}]")
    model.check_class_labels(class_labels, known.shape[0])
    if class_labels is not None:
        class_labels = class_labels.to(device)
    return known.to(device), mask.to(device), class_labels


def _check_args(T_draft, T_revise, M, strategy, temps, guidances):
    for name, v, lo in (("T_draft", T_draft, 1), ("T_revise", T_revise, 1), ("M", M, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    for name, v in temps:
        _validate.real(name, v, low=0.0, low_open=True)
    for name, v in guidances:
        _validate.real(name, v)


def _choose(strategy, conf, cand_b, n_reveal, g):
    """Positions to reveal (bool [N]) among one row's candidates by confidence (supp. C)."""
    idx = cand_b.nonzero()[:, 0]
    order = conf.argsort(descending=True, stable=True)
    if strategy == "top-c-50":  # keep the top half (at least n_reveal), then choose at random
        keep = order[: max(n_reveal, (len(order) + 1) // 2)]
        order = keep[torch.randperm(len(keep), generator=g).to(keep.device)]
    out = torch.zeros_like(cand_b)
    out[idx[order[:n_reveal]]] = True
    return out


@torch.no_grad()
def draft_and_revise(model, known: torch.Tensor | None = None, mask: torch.Tensor | None = None, *,
                     batch_size: int | None = None, class_labels: torch.Tensor | None = None,
                     generator: torch.Generator | int | None = None, backend: str = "auto", progress: bool = False,
                     return_history: bool = False, T_draft: int = 64, T_revise: int = 2, M: int = 3,
                     draft_temperature: float = 1.0, draft_guidance: float = 1.0, revise_temperature: float = 0.8,
                     revise_guidance: float = 1.4, top_k: int | None = None, top_p: float | None = None,
                     strategy: str = "random", depth_cache: bool = True) -> RQSample:
    """Generate (known=None) or inpaint RQ code maps with Draft-and-Revise (Algorithm 1).

    model: a ContextualRQTransformer. known int64 [B, H, W, D] codes (stacks under `mask`
    are ignored), mask bool [B, H, W] (True = generate; rows may differ); without known,
    batch_size maps are generated from all [MASK]. class_labels [B] (None: the null
    class / an unconditional model). generator: torch.Generator or int seed. backend: of
    every draw (`vqfast.ops.sample_logits`: "auto" fused kernels, "reference"). T_draft,
    T_revise, M; per-phase temperature and guidance scale (applied only with
    class_labels); top_k / top_p filter every draw; strategy for the draft phase
    ("random" | "top-c" | "top-c-50"); depth_cache=False is the naive baseline. Defaults:
    supp. A.4 for the 371M model (M = 3, T_revise = 2, 0.8 and guidance 1.4 in the revise
    phase). Returns RQSample(tokens [B, H, W, D], history: [Step, ...] with return_history).

        out = draft_and_revise(net, codes, box_mask, class_labels=y, T_draft=8, M=2, generator=0).tokens
    """
    _check_args(T_draft, T_revise, M, strategy,
                (("draft_temperature", draft_temperature), ("revise_temperature", revise_temperature)),
                (("draft_guidance", draft_guidance), ("revise_guidance", revise_guidance)))
    device = next(model.parameters()).device
    codes, mask, labels = _prepare(model, known, mask, batch_size, class_labels, device)
    g = as_generator(generator)
    B, H, W, D = codes.shape
    N = H * W
    cur = codes.reshape(B, N, D).clone()
    region = mask.reshape(B, N)
    known = ~region  # stacks the spatial transformer may see
    sampler = _Sampler(model, labels, g, top_k, top_p, depth_cache, backend)
    history: list[Step] = []
    plan = [("draft", 0, T_draft, draft_temperature, draft_guidance)]
    plan += [("revise", r + 1, T_revise, revise_temperature, revise_guidance) for r in range(M)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=T_draft + M * T_revise, desc="draft-and-revise", unit="step")
    for phase, rnd, T, temp, guidance in plan:
        groups = random_partition(region, T, g)
        for t in range(T):
            upd = groups == t
            if upd.any():
                if phase == "draft" and strategy != "random":
                    cand = region & ~known
                    new, conf = sampler.stacks(cur, ~known, cand, temp, guidance, with_confidence=True)
                    counts, starts = upd.sum(1).tolist(), [0] + cand.sum(1).cumsum(0).tolist()
                    upd = torch.stack([_choose(strategy, conf[starts[b]:starts[b + 1]], cand[b], counts[b], g)
                                       for b in range(B)])
                    cur[upd] = new[upd[cand]]
                else:
                    new, _ = sampler.stacks(cur, ~known | upd, upd, temp, guidance)
                    cur[upd] = new
                known = known | upd
            if return_history:
                history.append(Step(phase, rnd, t, upd.view(B, H, W).clone(), cur.view(B, H, W, D).clone()))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return RQSample(cur.view(B, H, W, D), history if return_history else None)
