"""VQDDM: the denoiser of VQ-DDM over a token map (VQ-DDM Sec. 3.1, eq. 23; appendix).

The network sees z_t (token ids [B, h, w]), the timestep t (sinusoidal embedding ->
2-layer MLP) and, optionally, a class label (an embedding added to the time embedding,
as in the official code), and predicts the logits of x0 with the residual
parameterization of eq. 23: logits = nn(z_t, t) + onehot(z_t), the one-hot added
unscaled before any softmax. Every backbone's output layer is zero-initialized, so an
untrained model predicts x0 = z_t.

Backbones behind one interface (`backbone=`):
- "unet": `vqfast.models.vqddm.unet.DiffusionUNet` (DDPM / PixelCNN++ U-Net with GroupNorm,
  attention at 16, 8 and 4); token ids enter through an embedding (one of the two input
  variants of the official repository; the other scales the index to [-1, 1]).
- "transformer": pre-LN blocks of `vqfast.models.common.transformer` over the h*w positions
  with a learned positional embedding and one prepended time/class token.

The model owns its noise schedule: `T` and `noise_schedule` are config, `model.schedule`
is the `vqfast.diffusion.CosineSchedule` that training (`VQDDM.loss`, the VLB of eq. 7) and
sampling (`vqfast.models.vqddm.sampler.vqddm_sample`) use.

Presets (`VQDDM.from_preset(name)`): "paper" (the appendix's 117M U-Net, K = 1024 on 16x16
maps, T = 4000), "tiny" (CPU-sized U-Net, K = 128) and "tiny-transformer".

    model = VQDDM.from_preset("tiny")
    logits = model(torch.randint(128, (2, 16, 16)), torch.tensor([1, 4000]))   # [2, 16, 16, 128]
    out = model.loss(torch.randint(128, (2, 16, 16)), generator=0)             # LossOutput, bits/dim
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from vqfast import random as _random
from vqfast.diffusion import CosineSchedule
from vqfast.models.common.outputs import LossOutput, loss_output
from vqfast.models.common.presets import PresetMixin
from vqfast.models.common.transformer import Block
from vqfast.models.vqddm.objective import DECODER_TERMS, ImportanceSampler, vlb_estimate
from vqfast.models.vqddm.unet import DiffusionUNet

BACKBONES = ("unet", "transformer")
# "cosine": eq. 19; "cosine-clip-sqrt": the official code's alpha_t = sqrt(clip(abar_t / abar_{t-1}, 0.001, 1))
NOISE_SCHEDULES = ("cosine", "cosine-clip-sqrt")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps t [B] -> float32 [B, dim] ([cos | sin] halves)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


class DiffusionTransformer(nn.Module):
    """x [B, L, dim] (embedded tokens), emb [B, dim] -> [B, L, out_channels] (zero-initialized head)."""

    def __init__(self, seq_len: int, out_channels: int, dim: int = 512, depth: int = 12, heads: int = 8,
                 mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(1, seq_len + 1, dim))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_channels)
        nn.init.zeros_(self.head.weight), nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = torch.cat([emb[:, None], x], dim=1) + self.pos_emb
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.norm(h[:, 1:]))


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


class VQDDM(PresetMixin, nn.Module):
    """z_t [B, h, w] (or [B, h*w]) int64 in [0, K), t [B] int64 in 0..T, class_labels [B] or None
    -> x0 logits [B, h, w, K] (or [B, h*w, K]) float32 = nn(z_t, t) + onehot(z_t) (eq. 23).

    codebook_size K; size h = w of the token map; backbone "unet" | "transformer" with its
    keyword arguments (`DiffusionUNet` / `DiffusionTransformer`); num_classes > 0 enables
    class conditioning (labels in [0, num_classes)); T steps of the `noise_schedule`
    ("cosine": eq. 19, or "cosine-clip-sqrt": the official code's), built by `schedule`;
    decoder_term: the VLB's t = 1 term, "eq22" or "posterior" (the official code's, whose loss
    gave the paper's NLL figures; the "paper" preset's), see `vqfast.models.vqddm.objective`.
    """

    PRESETS: dict[str, dict] = {
        # the appendix's 117M U-Net on 16x16 code maps (attention at 16, 8, 4)
        # t = 1 term as the official code computes it (the paper's NLL figures are its loss)
        "paper": dict(codebook_size=1024, size=16, backbone="unet", ch=224, ch_mult=[1, 2, 2, 2], num_res_blocks=2,
                      attn_resolutions=[16, 8, 4], heads=1, decoder_term="posterior"),
        # about 1M parameters at K = 128: trains on a CPU
        "tiny": dict(codebook_size=128, size=16, backbone="unet", ch=32, ch_mult=[1, 2, 2], num_res_blocks=1,
                     attn_resolutions=[8, 4], heads=1),
        "tiny-transformer": dict(codebook_size=128, size=16, backbone="transformer", dim=128, depth=4, heads=4),
    }

    def __init__(self, codebook_size: int, size: int = 16, backbone: str = "unet", num_classes: int = 0,
                 T: int = 4000, noise_schedule: str = "cosine", decoder_term: str = "eq22", **backbone_kwargs):
        super().__init__()
        K, size, T = _positive_int("codebook_size", codebook_size), _positive_int("size", size), _positive_int("T", T)
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {noise_schedule!r}")
        if decoder_term not in DECODER_TERMS:
            raise ValueError(f"decoder_term must be one of {DECODER_TERMS}, got {decoder_term!r}")
        kw = {k: list(v) if isinstance(v, tuple) else v for k, v in backbone_kwargs.items()}
        self.config = dict(codebook_size=K, size=size, backbone=backbone, num_classes=num_classes, T=T,
                           noise_schedule=noise_schedule, decoder_term=decoder_term, **kw)
        self.codebook_size, self.size, self.backbone_name, self.num_classes, self.T = K, size, backbone, num_classes, T
        if backbone == "unet":
            ch = backbone_kwargs.get("ch", 128)
            width, emb_dim = ch, 4 * ch
            self.net = DiffusionUNet(ch, K, resolution=size, emb_dim=emb_dim, **backbone_kwargs)
        else:
            width = emb_dim = backbone_kwargs.get("dim", 512)
            self.net = DiffusionTransformer(size * size, K, **backbone_kwargs)
        self.width = width
        self.tok_emb = nn.Embedding(K, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cls_emb = nn.Embedding(num_classes, emb_dim) if num_classes > 0 else None

    @property
    def token_hw(self) -> tuple[int, int]:
        """(h, w) of the token maps the model denoises."""
        return self.size, self.size

    @functools.cached_property
    def schedule(self) -> CosineSchedule:
        """The model's noise schedule (T steps, eq. 19 or the official code's variant; float64, CPU)."""
        return CosineSchedule(self.T, clip_sqrt=self.config["noise_schedule"] == "cosine-clip-sqrt",
                              num_classes=self.codebook_size)

    def loss(self, tokens: torch.Tensor, *, class_labels: torch.Tensor | None = None,
             generator: torch.Generator | int | None = None, sampler: ImportanceSampler | None = None) -> LossOutput:
        """The VLB (eq. 7) in bits/dim for token maps [B, h, w] (or [B, h*w]) int64: one t per sample,
        z_t ~ q(z_t | x0) (eq. 17), the t-term (eq. 24, or the decoder's eq. 22 at t = 1) weighted
        by 1 / p(t), plus the prior term.

        sampler: an `ImportanceSampler` over the model's T (None: uniform t); it records this
        batch's L_t (as the official code does inside its loss). generator: t and z_t's
        randomness (torch.Generator, int seed or None). terms: "bpd" (the estimate) and
        "prior" (its prior-term part, bits/dim)."""
        self._check_tokens(tokens)
        if sampler is not None and (not isinstance(sampler, ImportanceSampler) or sampler.T != self.T):
            raise ValueError(f"sampler must be an ImportanceSampler with T={self.T}, got "
                             f"{type(sampler).__name__} with T={getattr(sampler, 'T', None)}")
        est = vlb_estimate(self, tokens, self.schedule, sampler, key=_random.philox_key(generator),
                           class_labels=class_labels, decoder_term=self.config["decoder_term"])
        if sampler is not None:
            sampler.update(est.t, est.L_t)
        L = tokens[0].numel()
        return loss_output(est.loss, bpd=est.loss, prior=est.prior / (L * math.log(2)))

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        s, K = self.size, self.codebook_size
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64:
            raise TypeError(f"tokens must be an int64 tensor [B, {s}, {s}] or [B, {s * s}], got "
                            f"{getattr(tokens, 'dtype', type(tokens).__name__)}")
        if tokens.shape[1:] not in ((s, s), (s * s,)) or tokens.shape[0] < 1:
            raise ValueError(f"tokens must be [B >= 1, {s}, {s}] or [B, {s * s}], got {tuple(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= K:
            raise ValueError(f"tokens must lie in [0, K) = [0, {K}), got values in "
                             f"{int(tokens.min())}..{int(tokens.max())}")

    def _check(self, z_t: torch.Tensor, t: torch.Tensor, class_labels) -> None:
        L, K = self.size * self.size, self.codebook_size
        if not isinstance(z_t, torch.Tensor) or z_t.dtype != torch.int64:
            raise TypeError(f"z_t must be an int64 tensor [B, {self.size}, {self.size}], got "
                            f"{getattr(z_t, 'dtype', type(z_t).__name__)}")
        if z_t.dim() not in (2, 3) or z_t.shape[0] < 1 or z_t[0].numel() != L or \
                (z_t.dim() == 3 and z_t.shape[1:] != (self.size, self.size)):
            raise ValueError(f"z_t must be [B, {self.size}, {self.size}] or [B, {L}], got {tuple(z_t.shape)}")
        if z_t.numel() and (int(z_t.min()) < 0 or int(z_t.max()) >= K):
            raise ValueError(f"z_t must lie in [0, K) = [0, {K}), got values in {int(z_t.min())}..{int(z_t.max())}")
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32) or t.shape != z_t.shape[:1]:
            raise ValueError(f"t must be an integer tensor [B] = [{z_t.shape[0]}], got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > self.T):
            raise ValueError(f"t must lie in 0..T = 0..{self.T}, got values in {int(t.min())}..{int(t.max())}")
        if self.cls_emb is None and class_labels is not None:
            raise ValueError("class_labels given but the model was built with num_classes=0")
        if self.cls_emb is not None:
            if not isinstance(class_labels, torch.Tensor) or class_labels.shape != z_t.shape[:1]:
                raise ValueError(f"class_labels must be an int64 tensor [B] = [{z_t.shape[0]}] "
                                 f"(the model has num_classes={self.num_classes})")
            if int(class_labels.min()) < 0 or int(class_labels.max()) >= self.num_classes:
                raise ValueError(f"class_labels must lie in [0, {self.num_classes})")

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check(z_t, t, class_labels)
        B, s = z_t.shape[0], self.size
        flat = z_t.reshape(B, s * s)
        emb = self.time_mlp(timestep_embedding(t, self.width).to(self.tok_emb.weight.dtype))  # bf16 model: bf16
        if self.cls_emb is not None:
            emb = emb + self.cls_emb(class_labels)
        x = self.tok_emb(flat)  # [B, L, width]
        if self.backbone_name == "unet":
            out = self.net(x.transpose(1, 2).reshape(B, self.width, s, s), emb).flatten(2).transpose(1, 2)
        else:
            out = self.net(x, emb)
        # eq. 23: the network predicts a residual over the (unscaled) one-hot of z_t
        logits = out.float().contiguous().scatter_add_(-1, flat[..., None], out.new_ones(B, s * s, 1).float())
        return logits.reshape(*z_t.shape, self.codebook_size)
