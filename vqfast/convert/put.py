"""liuqk3/PUT (CVPR'22) P-VQVAE and UQ-Transformer -> `vqfast.models.put` in the "cvpr2022" layout.

The official trainer saves `{"model": state_dict, ...}`. A P-VQVAE checkpoint
(`PatchVQGAN`) holds `encoder.*` (PatchEncoder2: `pre_layers.0` Linear, `res_layers.{i}.layers.{1,3}`
Linears, `post_layers.1`), `quant_conv`, `quantize.{embedding, cluster_size, embedding_avg}`
(one [K + K', d] buffer: rows [0, K) are e, the rest e'), `post_quant_conv` and `decoder.*`
(PatchConvDecoder2: `pre_layers.0`, `res_layers.{i}.conv.{1,3}`, `up_layers.{j}.deconv`,
`post_layers.1`, the reference branch `encoder.layers.{i}`); the training loss (`loss.*`:
discriminator, VGG) is skipped. A transformer checkpoint holds the frozen P-VQVAE under
`content_codec.*` beside its own `emb_proj`, `pos_emb`, `blocks.{i}.{ln1, ln2, attn.{query, key,
value, proj}, mlp.{0, 2}}`, `layer_norm` and `to_logits`: both stages are converted.
Not stored in the weights, so arguments: the input `resolution` (256 in every released model),
the transformer's `heads` (8) and whether it is PUT^tok (`token_input`).
"""
from __future__ import annotations

import math
import re

import torch

from vqfast.convert._mapping import Conversion, concat, load_mapped, matrix_shape
from vqfast.models.put import PVQVAE, UQTransformer

_PVQVAE_KEY = "quantize.embedding"


def _count(state: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _weights_bias(mine: str, theirs: str) -> dict:
    return {f"{mine}.{p}": f"{theirs}.{p}" for p in ("weight", "bias")}


def pvqvae_key_map(model: PVQVAE) -> dict:
    """vqfast key -> official P-VQVAE key (or a row slice of the joint codebook buffers) of a PVQVAE."""
    keys = _weights_bias("encoder.fc_in", "encoder.pre_layers.0")
    keys.update(_weights_bias("encoder.fc_out", "encoder.post_layers.1"))
    keys.update(_weights_bias("decoder.conv_in", "decoder.pre_layers.0"))
    keys.update(_weights_bias("decoder.conv_out", "decoder.post_layers.1"))
    for conv in ("quant_conv", "post_quant_conv"):
        keys.update(_weights_bias(conv, conv))
    for i in range(model.config["depth"]):
        keys.update(_weights_bias(f"encoder.res.{i}.fc1", f"encoder.res_layers.{i}.layers.1"))
        keys.update(_weights_bias(f"encoder.res.{i}.fc2", f"encoder.res_layers.{i}.layers.3"))
        keys.update(_weights_bias(f"decoder.res.{i}.conv1", f"decoder.res_layers.{i}.conv.1"))
        keys.update(_weights_bias(f"decoder.res.{i}.conv2", f"decoder.res_layers.{i}.conv.3"))
    for j in range(len(model.decoder.up)):
        keys.update(_weights_bias(f"decoder.up.{j}", f"decoder.up_layers.{j}.deconv"))
    if model.decoder.reference:
        keys.update(_weights_bias("decoder.ref_in", "decoder.encoder.layers.0"))
        for j in range(len(model.decoder.ref_down)):
            keys.update(_weights_bias(f"decoder.ref_down.{j}", f"decoder.encoder.layers.{j + 1}"))
    K = model.codebook_size  # rows [0, K) of the joint buffers are e, [K, 2K) are e'
    for side, part in (("visible", slice(0, K)), ("masked", slice(K, 2 * K))):
        for mine, theirs in (("embed", "embedding"), ("cluster_size", "cluster_size"), ("embed_sum", "embedding_avg")):
            src = f"quantize.{theirs}"
            keys[f"quantizer.{side}_codebook.{mine}"] = ((lambda s, k=src, p=part: s[k][p]), (src,))
        keys[f"quantizer.{side}_codebook.initted"] = (lambda s: torch.tensor(True), ())
    return keys


def _pvqvae(state: dict[str, torch.Tensor], prefix: str, resolution: int) -> Conversion:
    """A PVQVAE(layout="cvpr2022") from the official P-VQVAE keys under `prefix`."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if sub.get("encoder.pre_layers.0.weight") is None or sub["encoder.pre_layers.0.weight"].dim() != 2:
        raise ValueError("only the P-VQVAE with the linear patch encoder (PatchEncoder2 of the CVPR'22 configs) "
                         f"converts; no 2-D {prefix}encoder.pre_layers.0.weight")
    rows, dim = matrix_shape(sub, "quantize.embedding")
    if rows % 2:
        raise ValueError(f"{prefix}quantize.embedding has {rows} rows; expected e and e' of equal size")
    hidden, patch_in = sub["encoder.pre_layers.0.weight"].shape
    patch = math.isqrt(patch_in // 3)
    depth = _count(sub, r"encoder\.res_layers\.(\d+)\.")
    res_hidden = sub["encoder.res_layers.0.layers.1.weight"].shape[0] if depth else hidden // 2
    reference = "decoder.encoder.layers.0.weight" in sub
    model = PVQVAE(resolution=resolution, patch=patch, dim=dim, codebook_size=rows // 2, hidden=hidden,
                   res_hidden=res_hidden, depth=depth, dec_base=sub["decoder.post_layers.1.weight"].shape[1],
                   reference=reference, layout="cvpr2022")
    return load_mapped(model, sub, pvqvae_key_map(model), ignore=("loss.",),
                       source=f"PUT P-VQVAE checkpoint ({prefix or 'top level'})")


def transformer_key_map(model: UQTransformer) -> dict:
    """vqfast key -> official transformer key (or a query/key/value concatenation) of a UQTransformer."""
    keys = {"pos": "pos_emb", **_weights_bias("emb", "emb_proj"), **_weights_bias("ln", "layer_norm"),
            **_weights_bias("head", "to_logits")}
    for i in range(len(model.blocks)):
        b = f"blocks.{i}"  # the same block index on both sides
        keys.update(_weights_bias(f"{b}.norm1", f"{b}.ln1"))
        keys.update(_weights_bias(f"{b}.norm2", f"{b}.ln2"))
        for name in ("attn.proj", "mlp.0", "mlp.2"):
            keys.update(_weights_bias(f"{b}.{name}", f"{b}.{name}"))
        for p in ("weight", "bias"):
            keys[f"{b}.attn.qkv.{p}"] = concat(*(f"{b}.attn.{n}.{p}" for n in ("query", "key", "value")))
    return keys


def _transformer(state: dict[str, torch.Tensor], heads: int, token_input: bool) -> Conversion:
    """A UQTransformer(layout="cvpr2022") from the official transformer keys (content_codec.* excluded)."""
    own = {k: v for k, v in state.items() if not k.startswith("content_codec.")}
    dim, feature_dim = matrix_shape(own, "emb_proj.weight")
    depth = _count(own, r"blocks\.(\d+)\.")
    if depth == 0:
        raise ValueError("the PUT transformer checkpoint has no blocks.{i}.* keys")
    model = UQTransformer(feature_dim=feature_dim, vocab_size=own["to_logits.weight"].shape[0],
                          seq_len=own["pos_emb"].shape[1], dim=dim, depth=depth, heads=heads,
                          mlp_ratio=own["blocks.0.mlp.0.weight"].shape[0] / dim, layout="cvpr2022",
                          token_input=token_input)
    return load_mapped(model, own, transformer_key_map(model), source="PUT transformer checkpoint")


def convert(state: dict[str, torch.Tensor], *, resolution: int = 256, heads: int = 8,
            token_input: bool = False) -> Conversion | dict[str, Conversion]:
    """A P-VQVAE checkpoint -> Conversion of a PVQVAE; a transformer checkpoint (which holds its
    P-VQVAE) -> {"pvqvae": Conversion, "transformer": Conversion}."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if _PVQVAE_KEY in state:
        return _pvqvae(state, "", resolution)
    if f"content_codec.{_PVQVAE_KEY}" in state and "emb_proj.weight" in state:
        return {"pvqvae": _pvqvae(state, "content_codec.", resolution),
                "transformer": _transformer(state, heads, token_input)}
    raise ValueError(f"not a PUT checkpoint: no {_PVQVAE_KEY!r} (P-VQVAE) nor 'content_codec.{_PVQVAE_KEY}' "
                     "with 'emb_proj.weight' (transformer)")
