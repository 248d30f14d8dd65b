"""The taming-transformers Encoder / Decoder layout -> vqfast's conv tokenizer, key by key.

The official Encoder / Decoder (`taming/modules/diffusionmodules/model.py`; RQ-VAE's
`rqvae/models/rqvae/modules.py` is the same code) map onto `vqfast.models.common.conv` one
module to one module: ResnetBlock -> ResBlock (norm1, conv1, norm2, conv2, nin_shortcut),
AttnBlock (q, k, v, proj_out -> one qkv conv and proj), Downsample / Upsample convs, the middle
block, conv_in / norm_out / conv_out, and quant_conv / post_quant_conv. The architecture is read
from the tensor shapes; only the input resolution is not stored (attention levels are given in
pixels), so it is an argument.
"""
from __future__ import annotations

import re

import torch

from vqfast.convert._mapping import concat
from vqfast.models.common.conv import AttnBlock, Downsample, ResBlock, Upsample


def _count(state: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_config(state: dict[str, torch.Tensor], resolution: int, embed_dim: int) -> dict:
    """Conv tokenizer kwargs of an official state dict (shapes), at input `resolution`."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    for key in ("encoder.conv_in.weight", "encoder.conv_out.weight", "encoder.down.0.block.0.conv2.weight"):
        if key not in state:
            raise ValueError(f"not a taming-layout encoder: no {key!r}")
    ch = state["encoder.conv_in.weight"].shape[0]
    levels = _count(state, r"encoder\.down\.(\d+)\.")
    blocks = _count(state, r"encoder\.down\.0\.block\.(\d+)\.")
    ch_mult = [state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels)]
    attn_res = [resolution // 2 ** i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state]
    return dict(resolution=resolution, in_channels=state["encoder.conv_in.weight"].shape[1], ch=ch, ch_mult=ch_mult,
                num_res_blocks=blocks, embed_dim=embed_dim, z_channels=state["encoder.conv_out.weight"].shape[0],
                attn=True, attn_resolutions=attn_res)


def _module_map(prefix: str, module, src: str) -> dict:
    if isinstance(module, ResBlock):
        names = {"body.0": "norm1", "body.2": "conv1", "body.3": "norm2", "body.5": "conv2", "skip": "nin_shortcut"}
        keys = {}
        for mine, theirs in names.items():
            if mine == "skip" and not isinstance(module.skip, torch.nn.Conv2d):
                continue
            keys.update({f"{prefix}.{mine}.{p}": f"{src}.{theirs}.{p}" for p in ("weight", "bias")})
        return keys
    if isinstance(module, AttnBlock):
        return {f"{prefix}.norm.weight": f"{src}.norm.weight", f"{prefix}.norm.bias": f"{src}.norm.bias",
                f"{prefix}.qkv.weight": concat(*(f"{src}.{n}.weight" for n in "qkv")),
                f"{prefix}.qkv.bias": concat(*(f"{src}.{n}.bias" for n in "qkv")),
                f"{prefix}.proj.weight": f"{src}.proj_out.weight", f"{prefix}.proj.bias": f"{src}.proj_out.bias"}
    return {f"{prefix}.{p}": f"{src}.{p}" for p in ("weight", "bias")}  # a conv or a GroupNorm


def _mid(prefix: str, mid, src: str) -> dict:
    keys = _module_map(f"{prefix}.0", mid[0], f"{src}.block_1")
    keys.update(_module_map(f"{prefix}.1", mid[1], f"{src}.attn_1"))
    keys.update(_module_map(f"{prefix}.2", mid[2], f"{src}.block_2"))
    return keys


def key_map(model, convs: tuple[str, ...] = ("quant_conv", "post_quant_conv")) -> dict:
    """vqfast key -> official key (or a q/k/v concatenation) for every tensor of a conv tokenizer's
    encoder, decoder (with or without its input conv and middle block) and the 1x1 `convs` (the
    quantizer is the caller's)."""
    keys = {}
    for side in ("encoder", "decoder"):
        net = getattr(model, side).net
        levels = len(model.config["ch_mult"])
        level, block = (0, 0) if side == "encoder" else (levels - 1, 0)
        seq = "down" if side == "encoder" else "up"
        for i, m in enumerate(net):
            prefix = f"{side}.net.{i}"
            if i == 0 and isinstance(m, torch.nn.Conv2d):
                keys.update(_module_map(prefix, m, f"{side}.conv_in"))
            elif isinstance(m, torch.nn.Sequential):
                keys.update(_mid(prefix, m, f"{side}.mid"))
            elif isinstance(m, ResBlock):
                keys.update(_module_map(prefix, m, f"{side}.{seq}.{level}.block.{block}"))
                block += 1
            elif isinstance(m, AttnBlock):
                keys.update(_module_map(prefix, m, f"{side}.{seq}.{level}.attn.{block - 1}"))
            elif isinstance(m, (Downsample, Upsample)):
                keys.update(_module_map(f"{prefix}.conv", m.conv, f"{side}.{seq}.{level}."
                                        f"{'downsample' if side == 'encoder' else 'upsample'}.conv"))
                level, block = level + (1 if side == "encoder" else -1), 0
            elif isinstance(m, torch.nn.GroupNorm):
                keys.update(_module_map(prefix, m, f"{side}.norm_out"))
            elif isinstance(m, torch.nn.Conv2d):
                keys.update(_module_map(prefix, m, f"{side}.conv_out"))
    for conv in convs:
        keys.update({f"{conv}.{p}": f"{conv}.{p}" for p in ("weight", "bias")})
    return keys
