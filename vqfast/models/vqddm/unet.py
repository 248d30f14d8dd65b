"""The U-Net denoiser backbone of VQ-DDM (VQ-DDM appendix "Discrete Diffusion Models").

DDPM's PixelCNN++-style U-Net (Ho et al. 2020) with GroupNorm: per resolution level
`num_res_blocks` time-conditioned ResBlocks (GroupNorm -> Swish -> conv3x3, the time
embedding added after the first conv, GroupNorm -> Swish -> dropout -> conv3x3), self-
attention blocks at the resolutions in `attn_resolutions` (VQ-DDM: 16, 8 and 4 instead of
DDPM's 16 only), stride-2 conv downsampling, a middle ResBlock-Attention-ResBlock, and
an upsampling path that concatenates the skip features (num_res_blocks + 1 ResBlocks per
level). The output conv is zero-initialized, so an untrained VQDDM predicts exactly the
one-hot of z_t (eq. 23's residual starts at zero).

    net = DiffusionUNet(in_channels=64, out_channels=512, ch=64, emb_dim=256, resolution=16)
    y = net(torch.randn(2, 64, 16, 16), torch.randn(2, 256))     # [2, 512, 16, 16]
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.layout import same_format
from vqfast.models.common.conv import check_conv_config
from vqfast.models.common.transformer import sdpa


def _norm(ch: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch, eps=1e-6)


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class TimeResBlock(nn.Module):
    """x [B, cin, H, W], emb [B, E] -> [B, cout, H, W] (DDPM's ResnetBlock)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(_norm(cout), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(cout, cout, 3, padding=1)))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class SpatialAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual (zero-initialized projection)."""

    def __init__(self, ch: int, heads: int = 1):
        super().__init__()
        if ch % heads:
            raise ValueError(f"channels={ch} must be divisible by heads={heads}")
        self.heads = heads
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        out = sdpa(q, k, v)  # [B, heads, HW, C/heads]
        return x + self.proj(same_format(out.transpose(-1, -2).reshape(B, C, H, W), x))


class _Level(nn.Module):
    """ResBlock (+ attention) pairs of one resolution level."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x, emb)
        return x


class DiffusionUNet(nn.Module):
    """x [B, in_channels, R, R], emb [B, emb_dim] -> [B, out_channels, R, R].

    ch: base width; ch_mult: width multipliers per level (len(ch_mult) - 1 halvings of R);
    attn_resolutions: feature-map sides that get self-attention; heads: attention heads.
    """

    def __init__(self, in_channels: int, out_channels: int, ch: int = 128, ch_mult=(1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions=(16, 8, 4), resolution: int = 16, emb_dim: int = 512,
                 heads: int = 1, dropout: float = 0.0):
        super().__init__()
        check_conv_config(ch_mult, num_res_blocks, resolution=resolution, ch=ch, heads=heads)
        ch_mult = tuple(ch_mult)
        if resolution % (2 ** (len(ch_mult) - 1)):
            raise ValueError(f"resolution={resolution} must be divisible by 2^(len(ch_mult)-1) = "
                             f"{2 ** (len(ch_mult) - 1)}")
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths, cin, res = [ch], ch, resolution
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, m in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                blocks = [TimeResBlock(cin, ch * m, emb_dim, dropout)]
                cin = ch * m
                if res in attn_resolutions:
                    blocks.append(SpatialAttention(cin, heads))
                self.down.append(_Level(blocks))
                widths.append(cin)
            if i < len(ch_mult) - 1:
                self.downsample.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))
                widths.append(cin)
                res //= 2
        self.mid = _Level([TimeResBlock(cin, cin, emb_dim, dropout), SpatialAttention(cin, heads),
                           TimeResBlock(cin, cin, emb_dim, dropout)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, m in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                blocks = [TimeResBlock(cin + widths.pop(), ch * m, emb_dim, dropout)]
                cin = ch * m
                if res in attn_resolutions:
                    blocks.append(SpatialAttention(cin, heads))
                self.up.append(_Level(blocks))
            if i > 0:
                self.upsample.append(nn.Conv2d(cin, cin, 3, padding=1))
                res *= 2
        self.num_res_blocks, self.levels = num_res_blocks, len(ch_mult)
        self.out = nn.Sequential(_norm(cin), nn.SiLU(), _zero(nn.Conv2d(cin, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(same_format(x, self.conv_in.weight))
        skips = [h]
        blocks = iter(self.down)
        for i in range(self.levels):
            for _ in range(self.num_res_blocks):
                h = next(blocks)(h, emb)
                skips.append(h)
            if i < self.levels - 1:
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid(h, emb)
        blocks = iter(self.up)
        for i in range(self.levels):
            for _ in range(self.num_res_blocks + 1):
                h = next(blocks)(torch.cat([h, skips.pop()], dim=1), emb)
            if i < self.levels - 1:
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)
