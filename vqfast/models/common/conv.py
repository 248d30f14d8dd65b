"""VQGAN-style convolutional tokenizer (taming-transformers' shape; MaskGIT's stage 1).

Encoder: conv stem -> per level `num_res_blocks` ResBlocks (GroupNorm + Swish) and a
stride-2 downsample (all levels but the last) -> mid ResBlock, self-attention,
ResBlock -> GroupNorm, Swish, conv -> 1x1 to the code dim. Decoder mirrors it with
nearest-neighbour upsampling. The quantizer is `vqfast.quantizers.VectorQuantizer`
(EMA codebook, PUT eq. 2, decay 0.99). A resolution R image gives an
(R / 2^(levels-1))^2 token map.

Loss (`forward`): L1 or L2 reconstruction + the quantizer's commitment term, plus
optional perceptual and adversarial terms (`vqfast.models.common.losses`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.layout import same_format
from vqfast.models.common.checks import check_image_dtype
from vqfast.models.common.outputs import TokenizerOutput, loss_output
from vqfast.models.common.transformer import sdpa
from vqfast.ops import _validate


def _norm(ch: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm -> Swish -> conv3x3, twice, with a 1x1 skip when channels change."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (used at the lowest resolution)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # [B, HW, C] each
        out = sdpa(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(same_format(out.transpose(1, 2).reshape(B, C, H, W), x))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming's asymmetric pad: exact halving


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(ch: int, attn: bool) -> nn.Sequential:
    return nn.Sequential(ResBlock(ch, ch), AttnBlock(ch) if attn else nn.Identity(), ResBlock(ch, ch))


def check_conv_config(ch_mult, num_res_blocks, **sizes) -> None:
    """Raise unless the sizes of a conv net are ints: `sizes` (resolution, ch, ...) positive,
    num_res_blocks >= 0, ch_mult a non-empty sequence of positive ints."""
    for name, v in sizes.items():
        _validate.integer(name, v, low=1)
    _validate.integer("num_res_blocks", num_res_blocks, low=0)
    if isinstance(ch_mult, (str, bytes)) or not isinstance(ch_mult, (list, tuple)) or not ch_mult:
        raise TypeError(f"ch_mult must be a non-empty list of ints (one per level), got {ch_mult!r}")
    for m in ch_mult:
        _validate.integer("ch_mult entries", m, low=1)


class Encoder(nn.Module):
    """images [B, C, R, R] -> [B, z_channels, R/f, R/f]; `attn_resolutions` puts an AttnBlock after
    each ResBlock of the levels at those resolutions (taming's layout), `attn` the middle one."""

    def __init__(self, in_channels: int, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 attn: bool, resolution: int = 0, attn_resolutions: tuple[int, ...] = ()):
        super().__init__()
        layers, cin, res = [nn.Conv2d(in_channels, ch, 3, padding=1)], ch, resolution
        for i, m in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(cin, ch * m))
                cin = ch * m
                if res in attn_resolutions:
                    layers.append(AttnBlock(cin))
            if i < len(ch_mult) - 1:
                layers.append(Downsample(cin))
                res //= 2
        layers += [_mid(cin, attn), _norm(cin), nn.SiLU(), nn.Conv2d(cin, z_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """[B, z_channels, R/f, R/f] -> images [B, C, R, R], the Encoder's mirror (num_res_blocks + 1
    ResBlocks per level, attention as the Encoder's). `stem=False` drops the input conv and the
    middle block (MQ-VAE's decoder: its de-mask module ends in that conv), so z_channels must then
    equal ch * ch_mult[-1]."""

    def __init__(self, out_channels: int, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 attn: bool, resolution: int = 0, attn_resolutions: tuple[int, ...] = (), stem: bool = True):
        super().__init__()
        cin, res = ch * ch_mult[-1], resolution // 2 ** (len(ch_mult) - 1)
        if not stem and z_channels != cin:
            raise ValueError(f"a decoder without stem needs z_channels == ch * ch_mult[-1] = {cin}, got {z_channels}")
        layers = [nn.Conv2d(z_channels, cin, 3, padding=1), _mid(cin, attn)] if stem else []
        for i, m in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock(cin, ch * m))
                cin = ch * m
                if res in attn_resolutions:
                    layers.append(AttnBlock(cin))
            if i > 0:
                layers.append(Upsample(cin))
                res *= 2
        layers += [_norm(cin), nn.SiLU(), nn.Conv2d(cin, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ConvTokenizer(nn.Module):
    """The body VQGAN and RQVAE share: encoder -> 1x1 -> quantizer -> 1x1 -> decoder, and the loss.

    config holds resolution, in_channels, ch, ch_mult, num_res_blocks, embed_dim, z_channels,
    attn, attn_resolutions (optional, default none), rec_loss; make_quantizer() builds the quantizer (called between the encoder and
    decoder so parameters are created in the same order as before the split)."""

    def __init__(self, config: dict, make_quantizer):
        super().__init__()
        c = config
        check_conv_config(c["ch_mult"], c["num_res_blocks"], resolution=c["resolution"], in_channels=c["in_channels"],
                          ch=c["ch"], z_channels=c["z_channels"])
        f = 2 ** (len(c["ch_mult"]) - 1)
        if c["resolution"] % f:
            raise ValueError(f"resolution={c['resolution']} must be divisible by the downsampling factor {f}")
        if c["rec_loss"] not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be 'l1' or 'l2', got {c['rec_loss']!r}")
        self.config = config
        self.token_hw = (c["resolution"] // f, c["resolution"] // f)
        self.rec_loss = c["rec_loss"]
        ch_mult = tuple(c["ch_mult"])
        attn_res = tuple(c.get("attn_resolutions", ()))
        self.encoder = Encoder(c["in_channels"], c["ch"], ch_mult, c["num_res_blocks"], c["z_channels"], c["attn"],
                               c["resolution"], attn_res)
        self.quant_conv = nn.Conv2d(c["z_channels"], c["embed_dim"], 1)
        self.quantizer = make_quantizer()
        self.post_quant_conv = nn.Conv2d(c["embed_dim"], c["z_channels"], 1)
        self.decoder = Decoder(c["in_channels"], c["ch"], ch_mult, c["num_res_blocks"], c["z_channels"], c["attn"],
                               c["resolution"], attn_res)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def token_shape(self) -> tuple[int, ...]:
        """Shape of one image's tokens: (h, w)."""
        return self.token_hw

    def _check_images(self, x: torch.Tensor) -> None:
        r, c = self.config["resolution"], self.config["in_channels"]
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != c or tuple(x.shape[2:]) != (r, r) \
                or not x.is_floating_point() or x.shape[0] < 1:
            raise ValueError(f"images must be a float tensor [B >= 1, {c}, {r}, {r}], got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        check_image_dtype(x, next(self.encoder.parameters()))
        if x.device.type != "meta" and not bool(torch.isfinite(x).all()):
            raise ValueError("images must be finite (found NaN or inf)")

    def quantize(self, x: torch.Tensor):
        """images -> (z_q [B, d, h, w], indices [B, h, w] (RQVAE: [B, h, w, D]), QuantizerLosses)."""
        self._check_images(x)
        return self.quantizer(self.quant_conv(self.encoder(x)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """images [B, C, R, R] -> token indices int64 [B, h, w] (RQVAE: [B, h, w, D])."""
        return self.quantize(x)[1]

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """quantized latents [B, d, h, w] -> images [B, C, R, R]."""
        # the codebook stays fp32 (EMA state) when the model is cast to bf16/fp16
        return self.decoder(self.post_quant_conv(z_q.to(self.post_quant_conv.weight.dtype)))

    def forward(self, images: torch.Tensor, *, perceptual: nn.Module | None = None, perceptual_weight: float = 1.0,
                adversarial=None) -> TokenizerOutput:
        """images -> TokenizerOutput(reconstruction, tokens, loss): rec (L1/L2) + the quantizer's
        commitment term, + perceptual_weight * perceptual(images, rec) when given, +
        adversarial.generator_loss(rec) when given (e.g. `vqfast.models.common.losses.HingeGAN`)."""
        z_q, tokens, qloss = self.quantize(images)
        rec = self.decode(z_q)
        rec_term = F.l1_loss(rec, images) if self.rec_loss == "l1" else F.mse_loss(rec, images)
        total = rec_term + qloss.total
        terms = {"rec": rec_term, "commit": qloss.commitment}
        if perceptual is not None:
            terms["perceptual"] = perceptual(images, rec)
            total = total + perceptual_weight * terms["perceptual"]
        if adversarial is not None:
            terms["adversarial"] = adversarial.generator_loss(rec)
            total = total + terms["adversarial"]
        return TokenizerOutput(rec, tokens, loss_output(total, **terms))

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens int64 [B, h, w] (or [B, h*w]; RQVAE: [B, h, w, D]) -> images [B, C, R, R]."""
        shape = self.token_shape
        flat = ((math.prod(self.token_hw), *shape[2:]), (math.prod(shape),))  # also [B, h*w] (RQVAE: [B, h*w, D])
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.dim() < 2 or \
                tokens.shape[0] < 1 or tuple(tokens.shape[1:]) not in (shape, *flat):
            raise ValueError(f"tokens must be int64 [B >= 1, {', '.join(map(str, shape))}], got "
                             f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError(f"tokens must lie in [0, {self.codebook_size}), got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        return self.decode(self.quantizer.indices_to_codes(tokens.reshape(-1, *shape)))
