"""Loss blocks the tokenizers share: VGG features from a local weights file, an LPIPS-style
perceptual distance on them, a PatchGAN discriminator and hinge adversarial terms.

Nothing is downloaded. `VGGFeatures.from_file(path, depth=16|19)` reads a torchvision
`vgg16` / `vgg19` state dict (keys `features.<i>.weight|bias`; `classifier.*` ignored) from
a safetensors file or a torch file (loaded with weights_only=True, so it cannot run code).
`VGGPerceptual.from_file(path)` also reads LPIPS's per-stage linear weights
(`lin<k>.model.1.weight`) when the file has them.

    vgg = VGGFeatures.from_file("vgg19.safetensors", depth=19)
    acts = vgg(images, ("relu1_1", "relu5_2"))       # {name: [B, C, H / 2^s, W / 2^s]}
    d = PatchDiscriminator(norm="spectral")           # EdgeConnect's (PUT); norm="batch": taming's
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

# Convs per stage (torchvision's configurations "D" and "E") and each stage's width.
_VGG_CONVS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
_VGG_WIDTHS = (64, 128, 256, 512, 512)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
# LPIPS compares the last ReLU of each VGG-16 stage.
_LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a local safetensors file or torch file (weights_only=True)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no weights file at {path!r} (nothing is downloaded; pass a local file)")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # SafetensorError, UnpicklingError (code or a non-torch file), a damaged zip
        raise ValueError(f"{path!r} is not a readable weights file (safetensors, or a torch.save state dict "
                         f"loadable with weights_only=True): {err}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict")
    return state


class VGGFeatures(nn.Module):
    """Frozen VGG-16/19 conv stack in torchvision's layout (`features`, up to the last ReLU).

    images [B, 3, H, W] in [-1, 1] (mapped to ImageNet normalization) -> {name: activation}
    for ReLU names "relu<stage>_<conv>" (e.g. relu1_1, relu3_4, relu5_2). Random weights until
    loaded with `from_file`.
    """

    def __init__(self, depth: int = 19):
        super().__init__()
        if depth not in _VGG_CONVS:
            raise ValueError(f"depth must be 16 or 19 (VGG-16 / VGG-19), got {depth!r}")
        self.depth = depth
        layers, cin, self.relu_index = [], 3, {}
        for stage, (n, width) in enumerate(zip(_VGG_CONVS[depth], _VGG_WIDTHS), start=1):
            if stage > 1:
                layers.append(nn.MaxPool2d(2, 2))
            for j in range(1, n + 1):
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
                self.relu_index[f"relu{stage}_{j}"] = len(layers) - 1
                cin = width
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | os.PathLike, depth: int = 19) -> "VGGFeatures":
        """Build from a local torchvision VGG state dict (safetensors or torch file)."""
        net = cls(depth)
        net.load_features(read_state_dict(path), source=os.fspath(path))
        return net

    def load_features(self, state: dict[str, torch.Tensor], source: str = "state") -> None:
        """Copy the conv weights of a torchvision VGG state dict (`features.` prefix optional)."""
        own = self.features.state_dict()
        got = {k.removeprefix("features."): v for k, v in state.items()}
        missing = [k for k in own if k not in got]
        if missing:
            raise ValueError(f"{source} is not a torchvision VGG-{self.depth} state dict: it lacks "
                             f"features.{missing[0]} ({len(missing)} conv tensors missing)")
        wrong = [k for k in own if tuple(got[k].shape) != tuple(own[k].shape)]
        if wrong:
            raise ValueError(f"{source}: features.{wrong[0]} has shape {tuple(got[wrong[0]].shape)}, "
                             f"VGG-{self.depth} needs {tuple(own[wrong[0]].shape)}")
        self.features.load_state_dict({k: got[k] for k in own})

    def forward(self, images: torch.Tensor, names) -> dict[str, torch.Tensor]:
        unknown = [n for n in names if n not in self.relu_index]
        if not names or unknown:
            raise ValueError(f"names must be layer names of VGG-{self.depth} ({sorted(self.relu_index)}), "
                             f"got {names!r}")
        wanted = {self.relu_index[n]: n for n in names}
        x, out = ((images + 1) / 2 - self.mean) / self.std, {}
        for i, layer in enumerate(self.features[:max(wanted) + 1]):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


class VGGPerceptual(nn.Module):
    """LPIPS-style distance: sum over VGG-16 stages of the (linearly weighted) squared
    difference of channel-normalized features, averaged over space. Images in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.vgg = VGGFeatures(16)
        self.lin = nn.ParameterList(nn.Parameter(torch.full((c,), 1.0 / c), requires_grad=False)
                                    for c in _VGG_WIDTHS)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "VGGPerceptual":
        """Build from a user-supplied VGG-16 (optionally LPIPS) weights file."""
        state = read_state_dict(path)
        net = cls()
        net.vgg.load_features({k: v for k, v in state.items() if k.startswith("features.")}, source=os.fspath(path))
        for k in range(len(_LPIPS_LAYERS)):
            key = f"lin{k}.model.1.weight"
            if key in state:
                net.lin[k].data.copy_(state[key].reshape(-1))
        return net.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y [B, 3, H, W] -> scalar distance."""
        feats = self.vgg(torch.cat([x, y]), _LPIPS_LAYERS)
        total = x.new_zeros(())
        for lin, name in zip(self.lin, _LPIPS_LAYERS):
            a, b = F.normalize(feats[name], dim=1, eps=1e-10).chunk(2)
            total = total + ((a - b) ** 2 * lin.view(1, -1, 1, 1)).sum(1).mean()
        return total


class PatchDiscriminator(nn.Module):
    """PatchGAN: images [B, C, H, W] -> logits [B, 1, h, w] (70x70 receptive field at depth 3).

    Conv 4x4/2 + LeakyReLU(0.2); `depth` convs 4x4 (stride 2, the last stride 1) to
    channels * min(2^i, 8), each normalized + LeakyReLU(0.2); a conv 4x4 to one logit map.
    norm="batch": BatchNorm after the inner convs, which drop their bias (pix2pix / taming's
    NLayerDiscriminator, the VQGAN loss); norm="spectral": spectral norm on every conv, biases
    kept (EdgeConnect's, PUT's D_adv of eq. 5).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, depth: int = 3, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "spectral"):
            raise ValueError(f"norm must be 'batch' or 'spectral', got {norm!r}")
        for name, v in (("in_channels", in_channels), ("channels", channels), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        wrap = spectral_norm if norm == "spectral" else (lambda conv: conv)
        layers, cin = [wrap(nn.Conv2d(in_channels, channels, 4, 2, 1)), nn.LeakyReLU(0.2)], channels
        for i in range(1, depth + 1):
            cout = channels * min(2 ** i, 8)
            layers.append(wrap(nn.Conv2d(cin, cout, 4, 2 if i < depth else 1, 1, bias=norm != "batch")))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2))
            cin = cout
        layers.append(wrap(nn.Conv2d(cin, 1, 4, 1, 1)))
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
