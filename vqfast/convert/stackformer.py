"""CrossmodalGroup/MaskedVectorQuantization Stackformer (`modules/masked_quantization_stage2/stackedgpt.py`,
`ReverseStackedPositionGPT`: the code stack first) -> `vqfast.models.mqvae.Stackformer`.

One to one up to index remaps: `value_transformer` / `position_transformer` blocks -> code /
position blocks (key, query, value -> one qkv; ln1 / ln2 -> norm1 / norm2), `value_head` /
`position_head` (LayerNorm + Linear) -> code / position norm and head, `value_pos_emb` ->
position_emb (id HW is the start position in both), `pos_emb` -> seq_pos. The code embedding:
the unconditional model's start token is row K (`sos_token` = 1024) there and row 0 here; the
class-conditional model holds the C class tokens before the codes in both, and vqfast's code
head keeps only the K code outputs of the official [C + K] head. A Lightning checkpoint's
`transformer.` prefix is dropped and its first stage (`first_stage_model.*`) skipped.
"""
from __future__ import annotations

import re

import torch

from vqfast.convert._mapping import Conversion, concat, load_mapped, matrix_shape
from vqfast.models.mqvae.stackformer import Stackformer


def _blocks(prefix: str, src: str, depth: int) -> dict:
    keys = {}
    for i in range(depth):
        p, s = f"{prefix}.{i}", f"{src}.{i}"
        for w in ("weight", "bias"):
            keys[f"{p}.norm1.{w}"] = f"{s}.ln1.{w}"
            keys[f"{p}.norm2.{w}"] = f"{s}.ln2.{w}"
            keys[f"{p}.attn.qkv.{w}"] = concat(*(f"{s}.attn.{n}.{w}" for n in ("query", "key", "value")))
            keys[f"{p}.attn.proj.{w}"] = f"{s}.attn.proj.{w}"
            keys[f"{p}.mlp.0.{w}"] = f"{s}.mlp.0.{w}"
            keys[f"{p}.mlp.2.{w}"] = f"{s}.mlp.2.{w}"
    return keys


def convert(state: dict[str, torch.Tensor], *, codebook_size: int = 1024, heads: int = 16,
            dropout: float = 0.1) -> Conversion:
    """A Stackformer holding an official ReverseStackedPositionGPT's weights (state: its state dict
    or a Lightning checkpoint's). The vocabulary is codebook_size + 1 (unconditional) or
    codebook_size + C (C classes); `heads` is not stored in the weights (16 in the released models)."""
    if any(k.startswith("transformer.") for k in state):
        state = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in state.items()}
    for key in ("value_emb.weight", "value_pos_emb.weight", "value_head.1.weight", "position_head.1.weight"):
        if key not in state:
            raise ValueError(f"not a Stackformer (ReverseStackedPositionGPT) state dict: no {key!r}")
    if "pos_emb" not in state:
        raise ValueError("only add_absolute_position=True models are supported: no 'pos_emb'")
    vocab, dim = matrix_shape(state, "value_emb.weight")
    first_stage = state.get("first_stage_model.quantize.codebook.weight")  # the MQ-VAE riding along, if any
    if first_stage is not None and first_stage.shape[0] != codebook_size:
        raise ValueError(f"codebook_size={codebook_size}, but the checkpoint's MQ-VAE has {first_stage.shape[0]} codes "
                         f"(a wrong codebook_size would read codes as class rows)")
    if vocab <= codebook_size:
        raise ValueError(f"value_emb has {vocab} rows: not more than codebook_size={codebook_size}")
    num_classes = 0 if vocab == codebook_size + 1 else vocab - codebook_size
    depth = {n: len({m.group(1) for k in state if (m := re.match(rf"{n}_transformer\.(\d+)\.", k))})
             for n in ("value", "position")}
    model = Stackformer(codebook_size=codebook_size, num_positions=state["value_pos_emb.weight"].shape[0] - 1,
                        num_classes=num_classes, dim=dim, code_depth=depth["value"], position_depth=depth["position"],
                        heads=heads, max_len=state["pos_emb"].shape[1], dropout=dropout)
    keys = _blocks("code_blocks", "value_transformer", depth["value"])
    keys.update(_blocks("position_blocks", "position_transformer", depth["position"]))
    emb = "value_emb.weight"
    if num_classes == 0:  # official start row K -> row 0, codes shift up by one
        keys["code_emb.weight"] = ((lambda s: torch.cat([s[emb][codebook_size:], s[emb][:codebook_size]])), (emb,))
        keys["code_head.weight"] = ((lambda s: s["value_head.1.weight"][:codebook_size]), ("value_head.1.weight",))
    else:
        keys["code_emb.weight"] = emb
        keys["code_head.weight"] = ((lambda s: s["value_head.1.weight"][num_classes:]), ("value_head.1.weight",))
    keys["position_emb.weight"] = "value_pos_emb.weight"
    keys["position_head.weight"] = "position_head.1.weight"
    keys["seq_pos"] = "pos_emb"
    for w in ("weight", "bias"):
        keys[f"code_norm.{w}"] = f"value_head.0.{w}"
        keys[f"position_norm.{w}"] = f"position_head.0.{w}"
    masks = tuple(k for k in state if k.endswith(".attn.mask"))  # the causal mask buffers
    return load_mapped(model, state, keys, ignore=("first_stage_model.", "cond_stage_model.") + masks,
                       source="Stackformer checkpoint")
