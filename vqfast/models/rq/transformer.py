"""Contextual RQ-Transformer (Lee et al., NeurIPS 2022, Sec. 3; supp. A.2, Table 1).

A code map S[B, H, W, D] (RQ-VAE codes, N = H*W positions in raster order, D depths)
is modelled by
- a bidirectional spatial transformer over u_n = PE(n) + sum_d e(S_nd) (unmasked) or
  PE(n) + e_[MASK] (masked: the whole stack is hidden), with an optional class token
  in front; its output h_n (after a final LayerNorm) conditions
- a causal depth transformer over the D codes of each position:
  v_n1 = PE_D(1) + h_n, v_nd = PE_D(d) + sum_{d' < d} e(S_nd'); its output at depth d
  predicts S_nd.
Training (`ContextualRQTransformer.loss`): r ~ U[0, 1), ceil(cos(pi r / 2) * N)
positions masked uniformly (at least one), NLL over the masked positions and all D
depths with teacher forcing over depth.

Choices (the paper is silent; documented here):
- one code embedding table e[K, dim] serves the spatial input, the depth input and
  the output head (weight tying, plus a bias): with it the Table 1 models have
  370.6M / 820.1M / 1.387B parameters (371M / 821M / 1.4B in the paper); an
  untied head would give 387M for the "371M" model;
- class conditioning: one class token prepended to the spatial sequence; class id
  `num_classes` is the null class; `loss` replaces labels by it with probability
  `class_dropout` (0.1) so that classifier-free guidance can be applied when sampling;
- blocks are `vqfast.models.common.transformer.Block` (pre-LN, GELU MLP x4, head dim 64);
  the depth transformer runs the same blocks causally, with a KV cache when sampling
  (`DepthCache`), so the spatial transformer runs once per sampling step.

    net = ContextualRQTransformer.from_preset("tiny")   # "371M", "821M", "1.4B" (supp. Table 1)
    logits = net(codes, masked)        # codes [B, 8, 8, 4], masked [B, 8, 8] -> [B, 8, 8, 4, K]
    loss = net.loss(codes, generator=0).total
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.common.masking import random_mask
from vqfast.models.common.outputs import LossOutput, loss_output
from vqfast.models.common.checks import check_class_labels
from vqfast.models.common.presets import PresetMixin
from vqfast.models.common.transformer import Block, SelfAttention, init_weights, sdpa
from vqfast.random import as_generator

_IMAGENET = dict(codebook_size=16384, grid=(8, 8), code_depth=4, num_classes=1000)
_TINY = dict(codebook_size=256, grid=(8, 8), code_depth=4, dim=128, spatial_depth=4, depth_depth=2)


def _attend(attn: SelfAttention, x: torch.Tensor, cache: list | None) -> torch.Tensor:
    """Causal self-attention of a Block's attention weights on x [B, L, dim].

    cache None: full causal pass (training). cache (a list, [] at the first step): x
    holds the next token (L = 1); its key/value is appended to cache = [k, v]."""
    B, L, dim = x.shape
    q, k, v = attn.qkv(x).view(B, L, 3, attn.heads, dim // attn.heads).permute(2, 0, 3, 1, 4)
    if cache is None:
        out = sdpa(q, k, v, is_causal=True)
    else:
        if cache:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        cache[:] = [k, v]
        out = F.scaled_dot_product_attention(q, k, v)  # the newest token sees every cached one
    return attn.proj(out.transpose(1, 2).reshape(B, L, dim))


def _causal_block(blk: Block, x: torch.Tensor, cache: list | None = None) -> torch.Tensor:
    x = x + _attend(blk.attn, blk.norm1(x), cache)
    return x + blk.mlp(blk.norm2(x))


class DepthCache:
    """Keys/values of the depth transformer for one batch of positions (one list per block)."""

    def __init__(self, n_blocks: int):
        self.layers: list[list] = [[] for _ in range(n_blocks)]


class ContextualRQTransformer(PresetMixin, nn.Module):
    """codes [B, H, W, D] (int64 in 0..K-1) + masked [B, H, W] -> logits [B, H, W, D, K].

    codebook_size K, grid (H, W), code_depth D (code_shape = (H, W, D)), dim (heads =
    dim // 64 unless given), spatial_depth / depth_depth: the blocks of the spatial / depth
    transformer (supp. Table 1: L_spatial, L_depth); num_classes > 0 enables class
    conditioning (class_labels [B], id num_classes = null class). See the module docstring.

    Presets: "371M", "821M", "1.4B" (supp. Table 1, ImageNet, 1000 classes), "tiny" and
    "tiny-cond" (10 classes): the 8x8x4 codes, K = 256, of the tiny RQVAE, for CPUs.
    """

    PRESETS = {  # supp. Table 1 (ImageNet; the CC-3M sizes need a text encoder and are left out)
        "371M": dict(_IMAGENET, dim=1024, spatial_depth=24, depth_depth=4),
        "821M": dict(_IMAGENET, dim=1536, spatial_depth=24, depth_depth=4),
        "1.4B": dict(_IMAGENET, dim=1536, spatial_depth=42, depth_depth=6),
        "tiny": dict(_TINY, num_classes=0),
        "tiny-cond": dict(_TINY, num_classes=10),
    }
    CONFIG_ALIASES = {"n_spatial": "spatial_depth", "n_depth": "depth_depth"}

    def __init__(self, codebook_size: int, grid: tuple[int, int] = (8, 8), code_depth: int = 4, dim: int = 1024,
                 spatial_depth: int = 24, depth_depth: int = 4, heads: int | None = None, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, num_classes: int = 0, class_dropout: float = 0.1):
        super().__init__()
        if isinstance(grid, (str, bytes)) or not isinstance(grid, (list, tuple)) or len(grid) != 2:
            raise ValueError(f"grid must be a pair (H, W) of positive ints, got {grid!r}")
        grid = tuple(grid)
        for name, v in (("codebook_size", codebook_size), ("code_depth", code_depth), ("dim", dim),
                        ("spatial_depth", spatial_depth), ("depth_depth", depth_depth), ("grid[0]", grid[0]),
                        ("grid[1]", grid[1])):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        if not 0.0 <= class_dropout < 1.0:
            raise ValueError(f"class_dropout must lie in [0, 1), got {class_dropout!r}")
        heads = heads or max(1, dim // 64)
        self.config = dict(codebook_size=codebook_size, grid=list(grid), code_depth=code_depth, dim=dim,
                           spatial_depth=spatial_depth, depth_depth=depth_depth, heads=heads, mlp_ratio=mlp_ratio,
                           dropout=dropout, num_classes=num_classes, class_dropout=class_dropout)
        self.codebook_size, self.grid, self.code_depth = codebook_size, grid, code_depth
        self.code_shape = (*grid, code_depth)
        self.num_classes, self.class_dropout = num_classes, class_dropout
        self.seq_len = grid[0] * grid[1]
        self.code_emb = nn.Embedding(codebook_size, dim)
        self.mask_emb = nn.Parameter(torch.zeros(dim))
        self.cls_emb = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None
        self.spatial_pos = nn.Parameter(torch.zeros(1, self.seq_len + (num_classes > 0), dim))
        self.spatial = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(spatial_depth))
        self.spatial_norm = nn.LayerNorm(dim)
        self.depth_pos = nn.Parameter(torch.zeros(1, code_depth, dim))
        self.depth = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth_depth))
        self.head_norm = nn.LayerNorm(dim)
        self.head_bias = nn.Parameter(torch.zeros(codebook_size))
        self.apply(init_weights)
        for p in (self.mask_emb, self.spatial_pos, self.depth_pos):
            nn.init.trunc_normal_(p, std=0.02)

    # ---- checks -------------------------------------------------------------------------
    def check_codes(self, codes: torch.Tensor, masked: torch.Tensor | None = None) -> None:
        """Raise a clear error unless codes is int64 [B, H, W, D] in range and masked bool [B, H, W]."""
        H, W = self.grid
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.long:
            raise TypeError(f"codes must be an int64 tensor, got {getattr(codes, 'dtype', type(codes))}")
        if codes.dim() != 4 or tuple(codes.shape[1:]) != (H, W, self.code_depth):
            raise ValueError(f"codes must be [B, {H}, {W}, {self.code_depth}], got {tuple(codes.shape)}")
        if masked is not None:
            if not isinstance(masked, torch.Tensor) or masked.dtype != torch.bool:
                raise TypeError(f"masked must be a bool tensor, got {getattr(masked, 'dtype', type(masked))}")
            if tuple(masked.shape) != tuple(codes.shape[:3]):
                raise ValueError(f"masked must be [B, {H}, {W}] = {tuple(codes.shape[:3])}, got {tuple(masked.shape)}")

    def _labels(self, class_labels: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        if self.cls_emb is None:
            if class_labels is not None:
                raise ValueError("class_labels given but the model was built with num_classes=0")
            return None
        if class_labels is None:  # unconditional: the null class
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if tuple(class_labels.shape) != (batch,):
            raise ValueError(f"class_labels must be [B={batch}], got {tuple(class_labels.shape)}")
        return class_labels

    def check_class_labels(self, class_labels: torch.Tensor | None, batch: int) -> None:
        """Raise unless class_labels is None or int64 [batch] in [0, num_classes] (num_classes: the null class)."""
        check_class_labels(class_labels, batch, self.num_classes if self.cls_emb is not None else 0)

    # ---- spatial transformer ----------------------------------------------------------
    def spatial_forward(self, codes: torch.Tensor, masked: torch.Tensor,
                        class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Context h [B, N, dim] (raster order) of codes [B, H, W, D] with masked stacks hidden.

        Codes under `masked` are never read (they may hold anything in range)."""
        B = codes.shape[0]
        flat = codes.reshape(B, self.seq_len, self.code_depth)
        m = masked.reshape(B, self.seq_len, 1)
        # masked stacks may carry placeholder ids: clamp before the lookup, then replace
        x = self.code_emb(flat.clamp(0, self.codebook_size - 1)).sum(2)
        x = torch.where(m, self.mask_emb.to(x.dtype), x)
        labels = self._labels(class_labels, B, codes.device)
        if labels is not None:
            x = torch.cat([self.cls_emb(labels)[:, None], x], 1)
        x = x + self.spatial_pos
        for blk in self.spatial:
            x = blk(x)
        x = self.spatial_norm(x)
        return x[:, 1:] if labels is not None else x

    # ---- depth transformer ------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Depth-transformer output [..., dim] -> code logits [..., K] (head tied to e)."""
        return F.linear(self.head_norm(x), self.code_emb.weight, self.head_bias)

    def depth_forward(self, h: torch.Tensor, stacks: torch.Tensor) -> torch.Tensor:
        """Teacher-forced depth pass: h [M, dim], stacks [M, D] -> logits [M, D, K]."""
        D = self.code_depth
        prev = self.code_emb(stacks[:, :-1]).cumsum(1)  # sum_{d' < d} e(S_d') for d = 2..D
        x = torch.cat([h[:, None], prev], 1) + self.depth_pos[:, :D]
        for blk in self.depth:
            x = _causal_block(blk, x)
        return self.logits(x)

    def depth_step(self, x: torch.Tensor, cache: DepthCache) -> torch.Tensor:
        """One cached depth step: x [M, dim] (input at the next depth) -> logits [M, K]."""
        x = x[:, None]
        for blk, layer_cache in zip(self.depth, cache.layers):
            x = _causal_block(blk, x, layer_cache)
        return self.logits(x[:, 0])

    def sample_stacks(self, h: torch.Tensor, pick: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Code stacks for h [M', dim], autoregressively over depth with a KV cache.

        pick(d, logits [M', K]) -> codes [M] with M' a multiple of M (M' = 2M when h
        stacks conditional and unconditional rows for guidance: the chosen code is fed
        back to both). Returns [M, D]."""
        cache, out = DepthCache(len(self.depth)), []
        x = h + self.depth_pos[0, 0]
        prev = torch.zeros_like(h)
        for d in range(self.code_depth):
            code = pick(d, self.depth_step(x, cache))
            out.append(code)
            if d + 1 < self.code_depth:
                prev = prev + self.code_emb(code.repeat(h.shape[0] // code.shape[0])).to(prev.dtype)
                x = prev + self.depth_pos[0, d + 1]
        return torch.stack(out, 1)

    # ---- full model and training ------------------------------------------------------
    def forward(self, codes: torch.Tensor, masked: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """logits [B, H, W, D, K]; logits at depth d of a position see its codes < d (teacher forcing)."""
        self.check_codes(codes, masked)
        h = self.spatial_forward(codes, masked, class_labels)
        B = codes.shape[0]
        logits = self.depth_forward(h.reshape(B * self.seq_len, -1),
                                    codes.reshape(B * self.seq_len, self.code_depth).clamp(0, self.codebook_size - 1))
        return logits.view(*codes.shape, self.codebook_size)

    def loss(self, codes: torch.Tensor, *, class_labels: torch.Tensor | None = None,
             generator: torch.Generator | int | None = None, mask: torch.Tensor | None = None) -> LossOutput:
        """Mean NLL of the codes [B, H, W, D] of the masked positions, all D depths (teacher
        forcing; supp. A.3). LossOutput terms: "nll".

        mask (bool [B, H, W], True = masked) overrides the cosine random mask. In training
        mode class labels [B] are dropped to the null class with probability class_dropout.
        The depth transformer runs only on the masked positions."""
        self.check_codes(codes)
        K = self.codebook_size
        B = codes.shape[0]
        if B == 0:
            raise ValueError(f"codes must hold at least one map, got shape {tuple(codes.shape)}")
        if codes.min() < 0 or codes.max() >= K:
            raise ValueError(f"codes must lie in [0, {K}), got range [{int(codes.min())}, {int(codes.max())}]")
        self.check_class_labels(class_labels, B)
        g = as_generator(generator)
        if mask is None:
            mask = random_mask(B, self.seq_len, "cosine", g, codes.device).view(codes.shape[:3])
        self.check_codes(codes, mask)
        labels = self._labels(class_labels, B, codes.device)
        if labels is not None and self.training and self.class_dropout > 0:
            drop = (torch.rand(B, generator=g) < self.class_dropout).to(codes.device)
            labels = labels.masked_fill(drop, self.num_classes)
        h = self.spatial_forward(codes, mask, labels if self.cls_emb is not None else None)
        sel = mask.reshape(B, self.seq_len)
        target = codes.reshape(B, self.seq_len, self.code_depth)[sel]  # [M, D]
        logits = self.depth_forward(h[sel], target)
        nll = F.cross_entropy(logits.reshape(-1, K).float(), target.reshape(-1))
        return loss_output(nll, nll=nll)

    def flops_spatial(self, batch: int) -> int:
        """Multiply-add FLOPs (2 per MAC) of one spatial pass on `batch` code maps."""
        c = self.config
        L = self.seq_len + (self.num_classes > 0)
        d, hidden = c["dim"], int(c["dim"] * c["mlp_ratio"])
        per_block = 2 * L * d * (4 * d + 2 * hidden) + 2 * 2 * L * L * d
        return batch * c["spatial_depth"] * per_block
