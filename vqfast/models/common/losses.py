"""Pluggable VQGAN loss terms: a VGG16 perceptual (LPIPS-style) loss from a weights file
the user supplies, and a PatchGAN discriminator with the hinge loss (taming-transformers).

Nothing is downloaded. `VGGPerceptual.from_file(path)` reads torchvision-style keys
(`features.<i>.weight|bias`) and, if present, LPIPS's per-stage linear weights
(`lin<k>.model.1.weight`) from a safetensors file (or a torch file, loaded with
weights_only=True so it cannot run code).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_STAGE_ENDS = (3, 8, 15, 22, 29)  # indices (in `features`) of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


class VGGPerceptual(nn.Module):
    """LPIPS-style distance: sum over VGG16 stages of the (linearly weighted) squared
    difference of channel-normalized features, averaged over space. Images in [-1, 1]."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.lin = nn.ParameterList(nn.Parameter(torch.full((c,), 1.0 / c), requires_grad=False)
                                    for c in (64, 128, 256, 512, 512))
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path: str) -> "VGGPerceptual":
        """Build from a user-supplied VGG16 (optionally LPIPS) weights file."""
        state = _read_weights(path)
        net = cls()
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        missing = set(net.features.state_dict()) - set(feats)
        if missing:
            raise ValueError(f"{path} lacks VGG16 weights {sorted(missing)[:4]}... (expected torchvision keys "
                             "'features.<i>.weight|bias')")
        net.features.load_state_dict(feats, strict=False)
        for k in range(5):
            key = f"lin{k}.model.1.weight"
            if key in state:
                net.lin[k].data.copy_(state[key].reshape(-1))
        return net.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = ((torch.cat([x, y]) + 1) / 2 - self.mean) / self.std
        total, stage = h.new_zeros(()), 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i == _STAGE_ENDS[stage]:
                a, b = F.normalize(h, dim=1, eps=1e-10).chunk(2)
                total = total + ((a - b) ** 2 * self.lin[stage].view(1, -1, 1, 1)).sum(1).mean()
                stage += 1
                if stage == len(_STAGE_ENDS):
                    break
        return total


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming NLayerDiscriminator): images [B, C, H, W] -> logits [B, 1, h, w]."""

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3):
        super().__init__()
        layers, cin = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)], ch
        for i in range(1, n_layers + 1):
            cout = ch * min(2 ** i, 8)
            layers += [nn.Conv2d(cin, cout, 4, 2 if i < n_layers else 1, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HingeGAN(nn.Module):
    """Hinge adversarial terms around a discriminator.

    generator_loss(fake) = -weight * mean(D(fake)); discriminator_loss(real, fake) =
    mean(relu(1 - D(real))) + mean(relu(1 + D(fake))) (fake detached).
    """

    def __init__(self, discriminator: nn.Module, weight: float = 0.1):
        super().__init__()
        self.discriminator, self.weight = discriminator, weight

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return -self.weight * self.discriminator(fake).mean()

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - self.discriminator(real)).mean() + F.relu(1 + self.discriminator(fake.detach())).mean()
