"""Stackformer: MQ-VAE's stage-2 model (Huang et al., CVPR 2023, Sec. 3.3; supp. Tables 1-3).

An MQ-VAE image is n (code v_i, position p_i) pairs, raster order by default. Two
causal transformers of vqfast `Block`s (pre-LN, GELU MLP x4), stacked:
- Code-Transformer, input at step i: E_v(v_{i-1}) + E_p(p_{i-1}) + PE[i] (PE: learned
  absolute sequence embedding, `absolute_position`), output h_i -> LN -> logits of v_i;
- Position-Transformer, input h_i + E_v(v_i) (ground-truth v_i in training, the sampled
  one when sampling) -> LN -> logits of p_i over HW + 1 ids (id HW = the start token).
Step 0 reads the start pair (v_{-1}, p_{-1}) = (class token, HW). E_v holds
max(num_classes, 1) start/class tokens followed by the K codes (code v is row
C + v: "codes offset by the class count"); the official code's unconditional model has
one start token and its class-conditional one uses the class id as the code start
token. Loss = CE(code) + CE(position), each a mean over the n steps.

Variants: `reversed=True` is Stackformer_r (supp. Table 3: the Position-Transformer
runs first on the same input, the Code-Transformer on g_i + E_p(p_i));
`absolute_position=False` drops PE ("w/o absolute sequence"). `order_tokens` reorders
(code, position) pairs by raster order or by descending importance score (supp.
Table 3's failing "descending order").

Choices (documented): the code head predicts the K codes only (the official head
also has C class-token outputs that its sampler masks to -inf); both heads are
LayerNorm + Linear without bias as in the official code; the model's `max_len` is the
training sequence length n (the official `block_size` is a larger 1024).

Parameter counts (every parameter, embeddings and heads included, supp. Table 2 setting:
ImageNet, 1000 classes, K = 1024, 32x32 positions, n = 256): "307M" 307.8M (+0.3%), "607M" 610.1M (+0.5%).

    net = Stackformer.from_preset("tiny")
    out = net.loss(codes, positions)       # codes, positions [B, 32] -> LossOutput(total, {"code", "position"})
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.common.outputs import LossOutput, loss_output
from vqfast.models.common.presets import PresetMixin
from vqfast.models.common.transformer import Block, SelfAttention, init_weights, sdpa
from vqfast.random import philox_key

_PAPER = dict(codebook_size=1024, num_positions=1024, num_classes=1000, dim=1024, heads=16, max_len=256, dropout=0.1)
# Supp. Table 1's small FFHQ models: the paper gives only the layer counts; width 512 / 8 heads is vqfast's choice.
_SMALL = dict(codebook_size=1024, num_positions=1024, num_classes=0, dim=512, heads=8, max_len=256, dropout=0.1)


_SPAN = 64  # decoding attention reads the cache in multiples of this many slots


class KVCache:
    """Keys/values of one causal stack, preallocated: keys k [layers, B, H, Dh, max_len]
    (stored transposed, so a decoding step multiplies q by k without a copy), values
    v [layers, B, H, max_len, Dh], and bias [max_len]: 0 for the `length` written slots,
    -inf after them. A step writes its keys/values in place (no torch.cat per step)."""

    def __init__(self, layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        # zeros: a decoding step reads the unwritten slots with weight 0 (0 * NaN would be NaN)
        self.k = torch.zeros(layers, batch, heads, head_dim, max_len, dtype=dtype, device=device)
        self.v = torch.zeros(layers, batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.bias = torch.full((max_len,), float("-inf"), dtype=dtype, device=device)
        self.length = 0
        self.max_len = max_len


def causal_attention(attn: SelfAttention, x: torch.Tensor, cache: KVCache | None = None,
                     layer: int = 0) -> torch.Tensor:
    """Causal self-attention with a `Block`'s weights, x [B, L, D] -> [B, L, D].

    cache None: the whole sequence. Else x holds tokens t = cache.length .. t + L - 1, whose
    keys/values are written to cache layer `layer` (`run_causal` opens cache.bias up to
    t + L - 1 before the first layer and advances cache.length after the last)."""
    B, L, D = x.shape
    H = attn.heads
    q, k, v = attn.qkv(x).view(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4)
    if cache is None:
        out = sdpa(q, k, v, dropout=attn.dropout if attn.training else 0.0, is_causal=True)
    else:
        t, n = cache.length, cache.max_len
        cache.k[layer, ..., t:t + L] = k.transpose(-1, -2)
        cache.v[layer, :, :, t:t + L] = v
        if L == 1:
            # The newest token sees every cached one. Two GEMMs over the first `span` slots (t + 1
            # rounded up to a multiple of _SPAN), later slots masked by the bias: few shapes, so
            # oneDNN reuses its bf16 primitives instead of creating new ones for each length
            # (CPU SDPA / bmm over exactly t + 1 keys: 0.1-0.4 ms a call).
            dh, span = D // H, min(n, -(-(t + 1) // _SPAN) * _SPAN)
            keys_t = cache.k[layer].view(B * H, dh, n)[:, :, :span]
            scores = torch.baddbmm(cache.bias[:span], q.reshape(B * H, 1, dh), keys_t, alpha=dh ** -0.5)
            probs = torch.softmax(scores.float(), -1).to(v.dtype)
            out = torch.bmm(probs, cache.v[layer].view(B * H, n, dh)[:, :span]).view(B, H, 1, dh)
        else:
            allowed = torch.arange(L, device=x.device)[:, None] + t >= torch.arange(t + L, device=x.device)
            out = F.scaled_dot_product_attention(q, cache.k[layer, ..., :t + L].transpose(-1, -2),
                                                 cache.v[layer, :, :, :t + L], attn_mask=allowed)
    return attn.proj(out.transpose(1, 2).reshape(B, L, D))


def run_causal(blocks: nn.ModuleList, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
    """x [B, L, D] through causal `Block`s (cached: the next L tokens; cache.length advances)."""
    if cache is not None:
        t, L = cache.length, x.shape[1]
        if t + L > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} tokens, cannot add {L} to {t}")
        cache.bias[t:t + L] = 0.0
    for i, blk in enumerate(blocks):
        dtype = blk.attn.qkv.weight.dtype  # bf16 blocks of a low_precision_copy: fp32 residual stream
        x = x + causal_attention(blk.attn, blk.norm1(x).to(dtype), cache, i)
        x = x + blk.mlp(blk.norm2(x).to(dtype))
    if cache is not None:
        cache.length += x.shape[1]
    return x


def order_tokens(codes: torch.Tensor, positions: torch.Tensor, scores: torch.Tensor | None = None,
                 order: str = "raster") -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder (code, position) pairs [B, n] per row: "raster" (ascending position) or
    "importance" (descending score; scores [B, HW] or [B, h, w] as MQVAE.encode returns,
    ties to the lower position). Returns (codes, positions) [B, n]."""
    if order not in ("raster", "importance"):
        raise ValueError(f"order must be 'raster' or 'importance', got {order!r}")
    idx = torch.sort(positions, dim=1).indices
    if order == "importance":
        if scores is None:
            raise ValueError("scores must be given for order='importance'")
        flat = scores.reshape(scores.shape[0], -1)
        if flat.shape[0] != positions.shape[0]:
            raise ValueError(f"scores must have {positions.shape[0]} rows, got shape {tuple(scores.shape)}")
        # stable sort of the raster-sorted row: equal scores keep the lower position first
        key = -flat.float().gather(1, positions.gather(1, idx))
        idx = idx.gather(1, torch.sort(key, dim=1, stable=True).indices)
    return codes.gather(1, idx), positions.gather(1, idx)


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


@contextmanager
def dropout_rng(generator: torch.Generator | int | None, device: torch.device, enabled: bool = True):
    """Dropout inside the block draws from `generator` (a torch.Generator or an int seed): torch's
    global RNG of `device` is seeded from it and restored afterwards. None or not enabled: the
    global RNG as is (the generator is left untouched)."""
    if generator is not None and not isinstance(generator, (int, torch.Generator)) or isinstance(generator, bool):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    if generator is None or not enabled:
        yield
        return
    seed = philox_key(generator) & ((1 << 63) - 1)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.cuda.default_generators[index].manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield


class Stackformer(PresetMixin, nn.Module):
    """(codes [B, n], positions [B, n], class_labels [B]) -> (code logits [B, n, K], position logits [B, n, HW + 1]).

    codebook_size K, num_positions HW, num_classes (0: unconditional), dim, code_depth /
    position_depth (blocks of the Code- / Position-Transformer), heads, max_len (longest
    sequence n), reversed (Stackformer_r), absolute_position (learned PE over the sequence
    index), dropout (attention and MLP). See the module docstring.

    Presets: "307M", "607M" (supp. Table 2), "small-c12p12" ... "small-c18p6" (supp. Table 1),
    "tiny" / "tiny-cond" (CPU sizes matching MQVAE's "tiny": 8x8 grid, 32 kept codes, K = 256).
    """

    PRESETS: dict[str, dict] = {
        "307M": dict(_PAPER, code_depth=18, position_depth=6),
        "607M": dict(_PAPER, code_depth=36, position_depth=12),
        **{f"small-c{c}p{p}": dict(_SMALL, code_depth=c, position_depth=p)
           for c, p in ((12, 12), (6, 12), (6, 18), (12, 6), (18, 6))},
        "tiny": dict(codebook_size=256, num_positions=64, num_classes=0, dim=64, code_depth=2, position_depth=1,
                     heads=4, max_len=32),
        "tiny-cond": dict(codebook_size=256, num_positions=64, num_classes=10, dim=64, code_depth=2,
                          position_depth=1, heads=4, max_len=32),
    }
    # constructor arguments renamed since checkpoints were first saved
    CONFIG_ALIASES = {"d_model": "dim", "n_heads": "heads", "n_code_layers": "code_depth",
                      "n_position_layers": "position_depth"}

    def __init__(self, codebook_size: int, num_positions: int, num_classes: int = 0, dim: int = 512,
                 code_depth: int = 12, position_depth: int = 12, heads: int = 8, max_len: int = 256,
                 reversed: bool = False, absolute_position: bool = True, dropout: float = 0.0):
        super().__init__()
        for name, v in (("codebook_size", codebook_size), ("num_positions", num_positions), ("dim", dim),
                        ("code_depth", code_depth), ("position_depth", position_depth), ("heads", heads),
                        ("max_len", max_len)):
            _positive_int(name, v)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.config = dict(codebook_size=codebook_size, num_positions=num_positions, num_classes=num_classes,
                           dim=dim, code_depth=code_depth, position_depth=position_depth, heads=heads,
                           max_len=max_len, reversed=bool(reversed), absolute_position=bool(absolute_position),
                           dropout=float(dropout))
        self.codebook_size, self.num_positions, self.num_classes = codebook_size, num_positions, num_classes
        self.max_len, self.reversed, self.heads = max_len, bool(reversed), heads
        self.num_starts = max(num_classes, 1)  # rows of E_v before the codes
        self.start_position = num_positions
        self.code_emb = nn.Embedding(self.num_starts + codebook_size, dim)
        self.position_emb = nn.Embedding(num_positions + 1, dim)
        self.seq_pos = nn.Parameter(torch.zeros(1, max_len, dim)) if absolute_position else None
        self.drop = nn.Dropout(dropout)
        self.code_blocks = nn.ModuleList(Block(dim, heads, 4.0, dropout) for _ in range(code_depth))
        self.position_blocks = nn.ModuleList(Block(dim, heads, 4.0, dropout) for _ in range(position_depth))
        self.code_norm, self.position_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.code_head = nn.Linear(dim, codebook_size, bias=False)
        self.position_head = nn.Linear(dim, num_positions + 1, bias=False)
        self.apply(functools.partial(init_weights, truncated=False))
        if self.seq_pos is not None:
            nn.init.trunc_normal_(self.seq_pos, std=0.02)

    # ---- checks -------------------------------------------------------------------------
    def start_ids(self, class_labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """E_v rows of the start token [B]: the class id, or 0 for an unconditional model."""
        labels = class_labels
        if self.num_classes == 0:
            if labels is not None:
                raise ValueError("class_labels given but the model was built with num_classes=0")
            return torch.zeros(batch, dtype=torch.long, device=device)
        if labels is None:
            raise ValueError(f"class_labels [B={batch}] are required: the model has num_classes={self.num_classes}")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or tuple(labels.shape) != (batch,):
            raise ValueError(f"class_labels must be an int64 tensor [B={batch}], got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
        if labels.device.type != "meta" and labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"class_labels must lie in [0, {self.num_classes})")
        return labels.to(device)

    def check_tokens(self, codes: torch.Tensor, positions: torch.Tensor, max_len: int | None = None,
                     names: tuple[str, str] = ("codes", "positions")) -> None:
        """Raise ValueError unless codes/positions are int64 [B, n] in range, positions distinct per row."""
        max_len = self.max_len if max_len is None else max_len
        for name, t in zip(names, (codes, positions)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.dim() != 2:
                raise ValueError(f"{name} must be an int64 tensor [B, n], got "
                                 f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if codes.shape != positions.shape:
            raise ValueError(f"{names[0]} {tuple(codes.shape)} and {names[1]} {tuple(positions.shape)} "
                             "must have the same shape [B, n]")
        if codes.shape[1] > max_len:
            raise ValueError(f"{names[0]} has n={codes.shape[1]} > max_len={max_len}")
        if codes.device.type == "meta" or codes.numel() == 0:
            return
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"{names[0]} must lie in [0, {self.codebook_size})")
        if positions.min() < 0 or positions.max() >= self.num_positions:
            raise ValueError(f"{names[1]} must lie in [0, {self.num_positions}) (id {self.num_positions} is the "
                             "start token)")
        s = positions.sort(dim=1).values
        if (s[:, 1:] == s[:, :-1]).any():
            raise ValueError(f"{names[1]} must be distinct within each row")

    # ---- pieces shared by training and sampling -------------------------------------------
    def inputs(self, prev_ids: torch.Tensor, prev_positions: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """First-stack input of steps offset .. offset + L - 1: E_v(prev_ids) + E_p(prev_positions)
        + PE; prev_ids [B, L] are E_v rows (start ids or num_starts + code), prev_positions [B, L]."""
        x = self.code_emb(prev_ids) + self.position_emb(prev_positions)
        if self.seq_pos is not None:
            x = x + self.seq_pos[:, offset:offset + x.shape[1]]
        return x

    def shifted(self, codes: torch.Tensor, positions: torch.Tensor, start: torch.Tensor):
        """The previous pairs of every step: (E_v rows [B, n], position ids [B, n]), step 0 = the start pair."""
        prev_ids = torch.cat([start[:, None], codes[:, :-1] + self.num_starts], 1)
        prev_pos = torch.cat([torch.full_like(positions[:, :1], self.start_position), positions[:, :-1]], 1)
        return prev_ids, prev_pos

    @property
    def stacks(self) -> tuple[str, str]:
        """("code", "position") or, for Stackformer_r, ("position", "code"): which token each stack predicts."""
        return ("position", "code") if self.reversed else ("code", "position")

    def blocks(self, kind: str) -> nn.ModuleList:
        return self.code_blocks if kind == "code" else self.position_blocks

    def logits(self, kind: str, h: torch.Tensor) -> torch.Tensor:
        """Stack output [..., D] -> code logits [..., K] or position logits [..., HW + 1]."""
        if kind == "code":
            return self.code_head(self.code_norm(h))
        return self.position_head(self.position_norm(h))

    def second_input(self, kind: str, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Second-stack input h + E(tokens): tokens are the first stack's predictions (`kind`)."""
        if kind == "code":
            return h + self.code_emb(tokens + self.num_starts)
        return h + self.position_emb(tokens)

    def new_caches(self, batch: int, length: int, dtype: torch.dtype, device) -> tuple[KVCache, KVCache]:
        """Empty KV caches of the first and the second stack for `length` tokens."""
        d = self.config["dim"]
        return tuple(KVCache(len(self.blocks(kind)), batch, self.heads, length, d // self.heads, dtype, device)
                     for kind in self.stacks)

    # ---- training -----------------------------------------------------------------------
    def forward(self, codes: torch.Tensor, positions: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits: (code logits [B, n, K], position logits [B, n, HW + 1])."""
        self.check_tokens(codes, positions)
        start = self.start_ids(class_labels, codes.shape[0], codes.device)
        first, second = self.stacks
        x = self.drop(self.inputs(*self.shifted(codes, positions, start)))
        h = run_causal(self.blocks(first), x)
        truth = {"code": codes, "position": positions}
        g = run_causal(self.blocks(second), self.second_input(first, h, truth[first]))
        out = {first: self.logits(first, h), second: self.logits(second, g)}
        return out["code"], out["position"]

    def loss(self, codes: torch.Tensor, positions: torch.Tensor, *, class_labels: torch.Tensor | None = None,
             generator: torch.Generator | int | None = None, order: str = "raster") -> LossOutput:
        """LossOutput(total = code + position, terms {"code": CE of v_i, "position": CE of p_i}),
        means over B x n (Sec. 3.3). codes, positions [B, n] int64; class_labels [B] for a
        class-conditional model.

        generator: the dropout masks' randomness (None: torch's global RNG; the loss draws
        nothing else). order "raster" sorts each row's pairs by position first (MQVAE.encode
        already returns them so); "given" trains on the order passed (e.g.
        `order_tokens(..., order="importance")`)."""
        if order not in ("raster", "given"):
            raise ValueError(f"order must be 'raster' or 'given', got {order!r}")
        self.check_tokens(codes, positions)
        if order == "raster":
            codes, positions = order_tokens(codes, positions)
        with dropout_rng(generator, codes.device, enabled=self.training and self.config["dropout"] > 0):
            code_logits, pos_logits = self(codes, positions, class_labels)
        code = F.cross_entropy(code_logits.flatten(0, 1).float(), codes.flatten())
        position = F.cross_entropy(pos_logits.flatten(0, 1).float(), positions.flatten())
        return loss_output(code + position, code=code, position=position)
