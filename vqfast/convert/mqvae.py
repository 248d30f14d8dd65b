"""CrossmodalGroup/MaskedVectorQuantization MQ-VAE (`models/stage1_masked/mqvae.py`) -> `vqfast.models.mqvae.MQVAE`.

Encoder as `vqfast.convert.conv_layout` (taming's); the decoder is taming's without its input
conv and middle block (`decoder_stem=False`). The adaptive mask (`masker.score_pred_net`: a
parameter-free LayerNorm, conv3x3, ReLU, conv1x1, BatchNorm, sigmoid; `masker.pre_projection`),
the de-mask module (`demasker.mask_token` [1, d, 1], `post_projection`, `conv_in`,
`transformer.blocks.{i}.resblock / attn`, `transformer.last_resblock`) and the EMA codebook
(`quantize.codebook.weight` [K + 1, d] whose last row is a never-chosen padding row, with
`cluster_size_ema` / `embed_ema`) map one to one. The de-mask ResBlocks' `temb_proj` (built,
never used) and the training loss (`loss.*`) are skipped. Input resolution and kept share are
not stored in the weights: they are arguments (the released f8 model: 256, 0.30).
"""
from __future__ import annotations

import re

import torch

from vqfast.convert import conv_layout
from vqfast.convert._mapping import Conversion, concat, load_mapped
from vqfast.models.mqvae.tokenizer import MQVAE


def _block(prefix: str, src: str, attn: bool = False) -> dict:
    if attn:
        return {f"{prefix}.norm.weight": f"{src}.norm.weight", f"{prefix}.norm.bias": f"{src}.norm.bias",
                f"{prefix}.qkv.weight": concat(*(f"{src}.{n}.weight" for n in "qkv")),
                f"{prefix}.qkv.bias": concat(*(f"{src}.{n}.bias" for n in "qkv")),
                f"{prefix}.proj.weight": f"{src}.proj_out.weight", f"{prefix}.proj.bias": f"{src}.proj_out.bias"}
    names = {"body.0": "norm1", "body.2": "conv1", "body.3": "norm2", "body.5": "conv2"}
    return {f"{prefix}.{mine}.{p}": f"{src}.{theirs}.{p}" for mine, theirs in names.items() for p in ("weight", "bias")}


def key_map(model: MQVAE) -> dict:
    """vqfast key -> official key (or a function of the state) for every tensor of `model`."""
    keys = conv_layout.key_map(model, convs=())
    scorer = {"0": "1", "2": "3"}
    for mine, theirs in scorer.items():
        keys.update({f"masker.scorer.{mine}.{p}": f"masker.score_pred_net.{theirs}.{p}" for p in ("weight", "bias")})
    keys.update({f"masker.scorer.3.{p}": f"masker.score_pred_net.4.{p}"
                 for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")})
    keys["masker.proj.weight"] = "masker.pre_projection.weight"
    emb = "quantize.codebook.weight"
    keys["quantizer.codebook_state.embed"] = ((lambda s: s[emb][:-1]), (emb,))
    keys["quantizer.codebook_state.cluster_size"] = "quantize.codebook.cluster_size_ema"
    keys["quantizer.codebook_state.embed_sum"] = "quantize.codebook.embed_ema"
    keys["quantizer.codebook_state.initted"] = (lambda s: torch.tensor(True), ())
    keys["demasker.mask_token"] = ((lambda s: s["demasker.mask_token"].reshape(-1)), ("demasker.mask_token",))
    for p in ("weight", "bias"):
        keys[f"demasker.proj.{p}"] = f"demasker.post_projection.{p}"
        keys[f"demasker.conv_in.{p}"] = f"demasker.conv_in.{p}"
    for i in range(len(model.demasker.res)):
        keys.update(_block(f"demasker.res.{i}", f"demasker.transformer.blocks.{i}.resblock"))
        keys.update(_block(f"demasker.attn.{i}", f"demasker.transformer.blocks.{i}.attn", attn=True))
    keys.update(_block("demasker.out", "demasker.transformer.last_resblock"))
    return keys


def infer_config(state: dict[str, torch.Tensor], resolution: int, ratio: float) -> dict:
    """MQVAE kwargs of an official state dict (shapes), at input `resolution` and kept share `ratio`."""
    emb = "quantize.codebook.weight"
    for key in (emb, "masker.pre_projection.weight", "demasker.mask_token"):
        if key not in state:
            raise ValueError(f"not an MQ-VAE state dict: no {key!r}")
    enc = conv_layout.infer_config(state, resolution, state[emb].shape[1])
    layers = {int(m.group(1)) for k in state if (m := re.match(r"demasker\.transformer\.blocks\.(\d+)\.", k))}
    return dict(resolution=resolution, in_channels=enc["in_channels"], ch=enc["ch"], ch_mult=enc["ch_mult"],
                num_res_blocks=enc["num_res_blocks"], z_channels=enc["z_channels"], attn=True,
                attn_resolutions=enc["attn_resolutions"], decoder_stem=False, codebook_size=state[emb].shape[0] - 1,
                embed_dim=state[emb].shape[1], ratio=ratio, demask_layers=len(layers),
                threshold_dead_code=None, kmeans_init=False, adversarial_weight=0.75)


def convert(state: dict[str, torch.Tensor], *, resolution: int = 256, ratio: float = 0.30,
            mask_init: float = 0.02) -> Conversion:
    """An MQVAE holding an official MQ-VAE's weights (state: its state dict; `ratio`: the kept
    share `topk_ratio` of the config it was trained with, `mask_init`: its `mask_init_value`)."""
    model = MQVAE(**infer_config(state, resolution, ratio), mask_init=mask_init)
    unused = tuple(k for k in state if re.match(r"demasker\..*\.temb_proj\.", k))
    return load_mapped(model, state, key_map(model), ignore=("loss.",) + unused,
                       source="MQ-VAE checkpoint")
