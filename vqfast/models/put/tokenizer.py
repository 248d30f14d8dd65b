"""P-VQVAE (PUT supp. Sec. 2, 4.1, Tables 1-2, Figure 1): patch encoder, dual codebook, MSG decoder.

Masks follow `vqfast.data`: bool [B, H, W], True = MISSING pixel. The paper's m is the
visible indicator (m = ~mask), x_hat = x * m (missing pixels become 0, mid-gray for
images in [-1, 1]). A token is visible (quantized with e) only if every pixel of its
r x r patch is; the others are quantized with e' and their index is offset by K.

    vae = PVQVAE.from_preset("tiny")                      # r=4, d=64, for 32x32 crops
    out = vae(x, mask)                                    # eq. 1: out.reconstruction, out.tokens, out.loss
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.layout import same_format
from vqfast.models.common.checks import check_image_dtype
from vqfast.models.common.outputs import TokenizerOutput
from vqfast.models.common.presets import PresetMixin
from vqfast.models.put.losses import PVQVAELoss
from vqfast.ops import _validate
from vqfast.quantizers import DualCodebookQuantizer


class LinearResBlock(nn.Module):
    """Figure 1(a): x + Linear(ReLU(Linear(ReLU(x)))), bottleneck `hidden`.

    relu_skip: the skip adds ReLU(x) instead of x (the official CVPR'22 code applies the first
    ReLU in place, so its skip carries the rectified input)."""

    def __init__(self, dim: int, hidden: int, relu_skip: bool = False):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.relu_skip = relu_skip

    def forward(self, x):
        h = F.relu(x)
        return (h if self.relu_skip else x) + self.fc2(F.relu(self.fc1(h)))


class ConvResBlock(nn.Module):
    """Figure 1(b): x + Conv(ReLU(Conv3x3(ReLU(x)))), bottleneck `hidden` (Table 1 sizes).

    The second conv is 3x3 (Figure 1(b)) or `kernel2` = 1 (the official CVPR'22 code);
    relu_skip as in LinearResBlock."""

    def __init__(self, dim: int, hidden: int, relu_skip: bool = False, kernel2: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, dim, kernel2, padding=kernel2 // 2)
        self.relu_skip = relu_skip

    def forward(self, x):
        h = F.relu(x)
        return (h if self.relu_skip else x) + self.conv2(F.relu(self.conv1(h)))


class PatchEncoder(nn.Module):
    """P-Enc (Table 1): non-overlapping r x r patches -> Linear 3r^2->C, `depth` Linear ResBlocks, Linear C->d.

    image [B, 3, H, W] -> features [B, H/r, W/r, d]. Every patch is encoded alone, so a
    visible patch's feature never sees a missing pixel.
    """

    def __init__(self, patch: int, hidden: int, res_hidden: int, depth: int, dim: int, official: bool = False):
        super().__init__()
        self.patch = patch
        self.fc_in = nn.Linear(3 * patch * patch, hidden)
        self.res = nn.Sequential(*[LinearResBlock(hidden, res_hidden, official) for _ in range(depth)])
        self.fc_out = nn.Linear(hidden, dim)

    def forward(self, x):
        r = self.patch
        B, C, H, W = x.shape
        p = x.reshape(B, C, H // r, r, W // r, r).permute(0, 2, 4, 1, 3, 5).reshape(B, H // r, W // r, C * r * r)
        return F.relu(self.fc_out(F.relu(self.res(self.fc_in(p)))))


def _down_channels(patch: int, base: int, hidden: int) -> list[int]:
    """Channels after each stride-2 stage of an r = 2^n downsampling: base, 2 base, ..., capped at hidden."""
    n = int(math.log2(patch))
    return [min(base * 2 ** i, hidden) for i in range(n - 1)] + [hidden]


class ConvEncoder(nn.Module):
    """Conv-Enc of PUT^conv (Table 2): log2(r) Conv 4x4/2, `depth` Conv ResBlocks, Conv3x3 C->d; ReLU after each.

    image [B, 3, H, W] -> features [B, H/r, W/r, d] (overlapping receptive fields).
    """

    def __init__(self, patch: int, hidden: int, res_hidden: int, depth: int, dim: int, base: int,
                 official: bool = False):
        super().__init__()
        chans = [3] + _down_channels(patch, base, hidden)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:]))
        self.res = nn.Sequential(*[_conv_block(hidden, res_hidden, official) for _ in range(depth)])
        self.conv_out = nn.Conv2d(hidden, dim, 3, padding=1)

    def forward(self, x):
        for conv in self.down:
            x = F.relu(conv(x))
        x = F.relu(self.conv_out(F.relu(self.res(x))))
        return x.permute(0, 2, 3, 1)


def _conv_block(dim: int, hidden: int, official: bool) -> ConvResBlock:
    """A Conv ResBlock of Figure 1(b), or of the official CVPR'22 layout (ReLU skip, 1x1 second conv)."""
    return ConvResBlock(dim, hidden, relu_skip=official, kernel2=1 if official else 3)


def _visible_at(visible: torch.Tensor, size: tuple[int, int], nearest: bool = False) -> torch.Tensor:
    """float [B, 1, H, W] visibility -> [B, 1, h, w]: a cell is visible only if all its pixels are
    (min-pool), or, with `nearest`, if the pixel nearest-neighbour sampling picks is (the
    official code's choice, which can leak missing pixels)."""
    if visible.shape[-2:] == size:
        return visible
    if nearest:
        return F.interpolate(visible, size=size, mode="nearest")
    return -F.adaptive_max_pool2d(-visible, size)


class MSGDecoder(nn.Module):
    """MSG-Dec (Table 1): Conv3x3 d->C, `depth` Conv ResBlocks, log2(r) Deconv 4x4/2, Conv3x3 ->3.

    The reference branch (bracketed rows of Table 1) encodes the reference image at every
    scale; before each upsampling and before the last conv the main features are replaced
    by the reference features where the reference is visible:
    x = x * (1 - m_s) + ref_s * m_s.
    z [B, h, w, d], ref_image [B, 3, H, W], ref_visible [B, H, W] bool -> image [B, 3, H, W].
    """

    def __init__(self, patch: int, dim: int, hidden: int, res_hidden: int, depth: int, base: int, reference: bool,
                 official: bool = False):
        super().__init__()
        self.conv_in = nn.Conv2d(dim, hidden, 3, padding=1)
        self.res = nn.Sequential(*[_conv_block(hidden, res_hidden, official) for _ in range(depth)])
        self.nearest_mask = official
        # Up path channels mirror the conv encoder's down path: hidden -> ... -> base.
        ups = _down_channels(patch, base, hidden)[::-1]
        ins = [hidden] + ups[:-1]
        self.up = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1) for a, b in zip(ins, ups))
        self.conv_out = nn.Conv2d(ups[-1], 3, 3, padding=1)
        self.reference = reference
        if reference:
            self.ref_in = nn.Conv2d(3, ups[-1], 3, padding=1)
            # ref_down[i] maps to the input channels of up[-1 - i] at its resolution.
            ref_chans = [ups[-1]] + ins[::-1]
            self.ref_down = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1)
                                          for a, b in zip(ref_chans[:-1], ref_chans[1:]))

    def forward(self, z, ref_image=None, ref_visible=None):
        x = self.res(F.relu(self.conv_in(same_format(z.permute(0, 3, 1, 2), self.conv_in.weight))))
        if not self.reference:
            for up in self.up:
                x = up(F.relu(x))
            return self.conv_out(F.relu(x))
        vis = ref_visible[:, None].to(x.dtype)
        refs = [self.ref_in(ref_image)]
        for conv in self.ref_down:
            refs.append(conv(F.relu(refs[-1])))
        for up, ref in zip(self.up, refs[::-1]):
            m = _visible_at(vis, tuple(x.shape[-2:]), self.nearest_mask)
            x = up(F.relu(x * (1 - m) + ref * m))
        x = x * (1 - vis) + refs[0] * vis
        return self.conv_out(F.relu(x))


class PUTEncoding(NamedTuple):
    """`PVQVAE.encode`: tokens [B, h, w] int64 (ids of e in [0, K) where the whole patch is
    visible, ids of e' offset by K, in [K, 2K), elsewhere), features [B, h, w, d] (f_hat,
    un-quantized: the UQ-Transformer's input), mask [B, h, w] bool (True = the patch has a
    missing pixel: ~m_down of Algorithm 1 line 2)."""
    tokens: torch.Tensor
    features: torch.Tensor
    mask: torch.Tensor


def check_images_and_mask(images, mask, patch: int, resolution: int | None = None,
                          name: str = "mask") -> torch.Tensor:
    """Validate images [B, 3, H, W] (finite floats; R x R when `resolution` is set) and mask bool
    [B, H, W] (or [B, 1, H, W]; None = nothing missing); return mask [B, H, W]."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4 \
            or images.shape[1] != 3:
        raise ValueError(f"images must be a float tensor [B, 3, H, W], got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    B, _, H, W = images.shape
    if B == 0:
        raise ValueError("images is an empty batch (B = 0)")
    if H % patch or W % patch:
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size r={patch}")
    if resolution is not None and (H, W) != (resolution, resolution):
        raise ValueError(f"images must be {resolution}x{resolution} (the P-VQVAE's resolution), got {H}x{W}")
    if images.device.type != "meta" and not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or inf")
    if mask is None:
        return torch.zeros(B, H, W, dtype=torch.bool, device=images.device)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor [B, H, W] with True = missing, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if tuple(mask.shape) != (B, H, W):
        raise ValueError(f"{name} must have shape [B, H, W] = {(B, H, W)} to match images, got {tuple(mask.shape)}")
    if mask.device != images.device:
        raise ValueError(f"{name} is on {mask.device} but images are on {images.device}")
    return mask


class PVQVAE(PresetMixin, nn.Module):
    """P-VQVAE: encoder E, dual codebook (e, e') with EMA (gamma 0.99), decoder D with reference branch.

    resolution R (images must be R x R; None: any size divisible by r), patch r, dim d
    (= codebook dim), codebook_size K (each of e, e'), hidden C and res_hidden (ResBlock
    widths), depth ResBlocks in encoder and decoder, dec_base (widest-resolution channels);
    variants: encoder="linear"|"conv" (PUT^conv), codebooks=2|1 (PUT^one: one e for every
    patch), reference=True|False (PUT^no-ref). Defaults are Table 1.
    threshold_dead_code: codes whose EMA count falls below it are re-seeded from batch
    features (0 = never, as the paper; the tiny preset uses 1 against codebook collapse).
    layout: "vqfast" (Figure 1 as drawn) or "cvpr2022", the layout of the official CVPR'22
    code, whose checkpoints `vqfast.convert` reads: ResBlocks whose skip adds ReLU(x), Conv
    ResBlocks with a 1x1 second conv, 1x1 `quant_conv` after the encoder and
    `post_quant_conv` before the decoder, missing pixels filled with -1 (black) instead of
    0, and the reference mask brought to each decoder scale by nearest sampling.

    Presets: "tiny" (32x32 crops, r=4, d=64, K=128, 2 ResBlocks), "paper" (Table 1 at
    256x256), "paper-conv" (P-VQVAE^conv: Table 2's encoder) and "cvpr2022-ffhq",
    "cvpr2022-places2", "cvpr2022-imagenet" (Table 1 in the official layout; one
    architecture for the three released models).

        vae = PVQVAE.from_preset("tiny")
        enc = vae.encode(x, mask)                       # PUTEncoding(tokens [B, 8, 8], features, mask)
        out = vae(x, mask)                              # TokenizerOutput(reconstruction, tokens, loss)
    """

    PRESETS = {
        "tiny": dict(resolution=32, patch=4, dim=64, codebook_size=128, hidden=64, res_hidden=32, depth=2,
                     dec_base=32, threshold_dead_code=1.0),
        "paper": dict(resolution=256),
        "paper-conv": dict(resolution=256, encoder="conv"),
        **{f"cvpr2022-{name}": dict(resolution=256, layout="cvpr2022") for name in ("ffhq", "places2", "imagenet")},
    }
    LAYOUTS = ("vqfast", "cvpr2022")
    CONFIG_ALIASES = {"n_res": "depth"}

    def __init__(self, *, resolution: int | None = None, patch: int = 8, dim: int = 256, codebook_size: int = 512,
                 hidden: int = 256, res_hidden: int = 128, depth: int = 8, dec_base: int = 64,
                 encoder: str = "linear", codebooks: int = 2, reference: bool = True, decay: float = 0.99,
                 threshold_dead_code: float = 0.0, layout: str = "vqfast"):
        super().__init__()
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 2 or patch & (patch - 1):
            raise ValueError(f"patch must be a power of two >= 2, got {patch}")
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)
                                       or resolution < patch or resolution % patch):
            raise ValueError(f"resolution must be None or a positive multiple of the patch size r={patch}, "
                             f"got {resolution!r}")
        for name, v in (("hidden", hidden), ("res_hidden", res_hidden), ("dec_base", dec_base)):
            _validate.integer(name, v, low=1)
        _validate.integer("depth", depth, low=0)
        if encoder not in ("linear", "conv"):
            raise ValueError(f"encoder must be 'linear' or 'conv', got {encoder!r}")
        if codebooks not in (1, 2):
            raise ValueError(f"codebooks must be 1 or 2, got {codebooks!r}")
        if layout not in self.LAYOUTS:
            raise ValueError(f"layout must be one of {self.LAYOUTS}, got {layout!r}")
        self.config = dict(resolution=resolution, patch=patch, dim=dim, codebook_size=codebook_size, hidden=hidden,
                           res_hidden=res_hidden, depth=depth, dec_base=dec_base, encoder=encoder,
                           codebooks=codebooks, reference=reference, decay=decay,
                           threshold_dead_code=threshold_dead_code, layout=layout)
        official = layout == "cvpr2022"
        # The value a missing pixel takes in x_hat: 0 (x * m), or -1 (black) in the official code.
        self.fill = -1.0 if official else 0.0
        self.resolution, self.patch, self.dim = resolution, patch, dim
        self.codebook_size, self.codebooks = codebook_size, codebooks
        if encoder == "linear":
            self.encoder = PatchEncoder(patch, hidden, res_hidden, depth, dim, official)
        else:
            self.encoder = ConvEncoder(patch, hidden, res_hidden, depth, dim, dec_base, official)
        self.quantizer = DualCodebookQuantizer(dim, codebook_size, codebook_size, decay=decay,
                                               threshold_dead_code=threshold_dead_code)
        self.decoder = MSGDecoder(patch, dim, hidden, res_hidden, depth, dec_base, reference, official)
        if official:
            self.quant_conv, self.post_quant_conv = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        else:
            self.quant_conv = self.post_quant_conv = None

    @property
    def vocab_size(self) -> int:
        """Token ids of e: [0, K); e' ids are [K, 2K) (only ever assigned to masked patches)."""
        return self.codebook_size

    def check_images(self, images: torch.Tensor, mask: torch.Tensor | None, name: str = "mask") -> torch.Tensor:
        """Validate images [B, 3, R, R] and a pixel mask (see `check_images_and_mask`); return mask [B, H, W]."""
        mask = check_images_and_mask(images, mask, self.patch, self.resolution, name)
        check_image_dtype(images, next(self.encoder.parameters()))
        return mask

    def token_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """bool [B, H, W] missing-pixel mask -> bool [B, H/r, W/r]: True where the patch has a missing
        pixel (the complement of Algorithm 1 line 2's m_down)."""
        return F.max_pool2d(mask[:, None].float(), self.patch)[:, 0] > 0

    def quantize(self, features: torch.Tensor, mask: torch.Tensor):
        """Dual-codebook quantization (Sec. 3.1 of the paper; EMA update in training mode).

        features [B,h,w,d], mask [B,h,w] bool (True -> e') -> (z_q [B,h,w,d] straight-through,
        tokens [B,h,w] (masked ones offset by K), commitment ||sg(e_hat) - f_hat||^2).
        """
        B, h, w, d = features.shape
        visible = ~mask if self.codebooks == 2 else torch.ones_like(mask)
        z_q, idx, losses = self.quantizer(features.reshape(B * h * w, d), visible.reshape(-1))
        return z_q.reshape(B, h, w, d), idx.reshape(B, h, w), losses.commitment

    def codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Vector retrieval (Algorithm 1 line 16): tokens [...] in [0, 2K) -> vectors [..., d]."""
        return self.quantizer.indices_to_codes(tokens)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> PUTEncoding:
        """Algorithm 1 line 3: f_hat = E(x * m), t_hat = I(f_hat, e, e', m_down).

        images [B,3,H,W] in [-1, 1], mask bool [B,H,W] (True = missing; None = all visible)
        -> PUTEncoding(tokens [B,h,w], features [B,h,w,d], mask [B,h,w]). Never updates the codebooks.
        """
        mask = self.check_images(images, mask)
        features = self._features(self._masked(images, mask))
        token_mask = self.token_mask(mask)
        was_training = self.quantizer.training
        self.quantizer.eval()
        try:
            _, tokens, _ = self.quantize(features, token_mask)
        finally:
            self.quantizer.train(was_training)
        return PUTEncoding(tokens, features, token_mask)

    def _masked(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x_hat: images [B,3,H,W] with the pixels where mask [B,H,W] is True set to `self.fill`."""
        kept = images * (~mask)[:, None].to(images.dtype)
        return kept if self.fill == 0.0 else kept + self.fill * mask[:, None].to(images.dtype)

    @staticmethod
    def _pointwise(conv: nn.Conv2d | None, z: torch.Tensor) -> torch.Tensor:
        """A 1x1 conv on channel-last z [B,h,w,d] (identity when conv is None)."""
        return z if conv is None else F.linear(z, conv.weight[:, :, 0, 0], conv.bias)

    def _features(self, x_hat: torch.Tensor) -> torch.Tensor:
        """f_hat = E(x_hat) [B,h,w,d] (then quant_conv in the official layout)."""
        return self._pointwise(self.quant_conv, self.encoder(x_hat))

    def _decode(self, z: torch.Tensor, ref_images: torch.Tensor, ref_mask: torch.Tensor) -> torch.Tensor:
        z = z.to(next(self.decoder.parameters()).dtype)  # the codebooks stay fp32 when the model is cast
        return self.decoder(self._pointwise(self.post_quant_conv, z), self._masked(ref_images, ref_mask), ~ref_mask)

    def decode(self, z: torch.Tensor, ref_images: torch.Tensor, ref_mask: torch.Tensor | None) -> torch.Tensor:
        """D(z, m_ref, x_ref): z [B,h,w,d], ref_images [B,3,H,W], ref_mask bool [B,H,W] (True = missing) ->
        images [B,3,H,W]. The reference is set to `fill` (0, or -1 in the official layout) where
        missing before it enters the decoder."""
        ref_mask = self.check_images(ref_images, ref_mask, "ref_mask")
        h, w = ref_images.shape[-2] // self.patch, ref_images.shape[-1] // self.patch
        if z.dim() != 4 or tuple(z.shape[1:]) != (h, w, self.dim):
            raise ValueError(f"z must be [B, {h}, {w}, {self.dim}] to match ref_images, got {tuple(z.shape)}")
        return self._decode(z, ref_images, ref_mask)

    def decode_tokens(self, tokens: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Algorithm 1 lines 16-17: x^I = D(e[t], m, x_hat). tokens [B,h,w] int64 in [0, 2K) (e' ids where
        a position was left unfilled), images [B,3,H,W] (read only where mask is False), mask bool
        [B,H,W] (True = missing) -> images [B,3,H,W]."""
        mask = self.check_images(images, mask)
        B, _, H, W = images.shape
        grid = (B, H // self.patch, W // self.patch)
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tuple(tokens.shape) != grid:
            raise ValueError(f"tokens must be an int64 tensor {list(grid)} to match images, got "
                             f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.device.type != "meta" and bool(((tokens < 0) | (tokens >= 2 * self.codebook_size)).any()):
            raise ValueError(f"tokens must lie in [0, {2 * self.codebook_size}) (e, then e' offset by K)")
        return self._decode(self.codes(tokens), images, mask)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None, ref_mask: torch.Tensor | None = None,
                *, loss_fn: PVQVAELoss | None = None, step: int = 0) -> TokenizerOutput:
        """Eq. 1: x_hat^R = D(e_hat, m * m', x_hat * m'), e_hat = I(E(x_hat), e, e', m_down).

        images [B,3,H,W] in [-1, 1]; mask, ref_mask bool [B,H,W] with True = missing (m = ~mask,
        m' = ~ref_mask; ref_mask=None means m' = 1). loss_fn: a `PVQVAELoss` (None: pixel +
        gradient + commitment terms, no discriminator or VGG); step: the training step it sees.
        -> TokenizerOutput(reconstruction [B,3,H,W], tokens [B,h,w], loss LossOutput).
        """
        mask = self.check_images(images, mask)
        ref_mask = self.check_images(images, ref_mask, "ref_mask")
        x_hat = self._masked(images, mask)
        features = self._features(x_hat)
        z_q, tokens, commitment = self.quantize(features, self.token_mask(mask))
        reconstruction = self._decode(z_q, x_hat, mask | ref_mask)
        loss = (loss_fn if loss_fn is not None else _RECONSTRUCTION_LOSS)(x_hat, reconstruction, commitment, step)
        return TokenizerOutput(reconstruction, tokens, loss)


# The default loss of PVQVAE.forward (stateless: no discriminator, no VGG, as its docstring says:
# the warning PVQVAELoss gives for a training loss without VGG does not apply).
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _RECONSTRUCTION_LOSS = PVQVAELoss(adversarial=False)
