"""P-VQVAE training loss (PUT supp. eqs. 1, 3-8).

L_vae = L_rec(x_hat, x_hat^R) + beta ||sg(e_hat) - f_hat||^2 (beta = 0.25; the codebook term
of eq. 1 is replaced by the EMA update of eq. 2 inside the quantizer), with
L_rec = L_pixel + 5 L_grad + 0.1 L_adv + 0.1 L_perc + 250 L_style (eq. 8).

The perceptual and style terms (eqs. 6-7) need VGG-19 weights. Nothing is downloaded:
pass `vgg_weights=<path>` to a local file (torchvision's `vgg19` state dict, `.pth` or
`.safetensors`, keys `features.<i>.weight|bias`); without it these two terms are off
(reported as 0) and the loss is pixel + gradient + adversarial + commitment.

    loss_fn = PVQVAELoss()                          # adversarial on, VGG terms off
    terms = loss_fn.generator_loss(out)             # out = PVQVAE(...)(x, mask, ref_mask)
    terms["total"].backward(); loss_fn.discriminator_loss(out)["total"].backward()
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

# Eq. 8 weights and eq. 1's beta.
LAMBDA_GRAD, LAMBDA_ADV, LAMBDA_PERC, LAMBDA_STYLE, BETA = 5.0, 0.1, 0.1, 250.0, 0.25

# VGG-19 `features` indices of the ReLUs named in Sec. 2 (torchvision layout).
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
_RELU = {"relu1_1": 1, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_4": 17, "relu4_1": 20, "relu4_4": 26,
         "relu5_1": 29, "relu5_2": 31}
PERC_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STYLE_LAYERS = ("relu2_2", "relu3_4", "relu4_4", "relu5_2")


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """grad[x] of eq. 4: forward differences along W and H. x [B,C,H,W] -> ([B,C,H,W-1], [B,C,H-1,W])."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 4: mean |grad[a] - grad[b]| over both directions."""
    (ax, ay), (bx, by) = image_gradients(a), image_gradients(b)
    return 0.5 * ((ax - bx).abs().mean() + (ay - by).abs().mean())


def gram(x: torch.Tensor) -> torch.Tensor:
    """G(phi) of eq. 7: [B,C,H,W] -> [B,C,C], normalized by C*H*W."""
    B, C, H, W = x.shape
    f = x.reshape(B, C, H * W)
    return f @ f.transpose(1, 2) / (C * H * W)


class PatchDiscriminator(nn.Module):
    """D_adv of eq. 5: EdgeConnect's 70x70 PatchGAN (4x4 convs with spectral norm, LeakyReLU 0.2).

    image [B,3,H,W] -> logits [B,1,H',W'] (sigmoid gives D_adv).
    """

    def __init__(self, channels: int = 64):
        super().__init__()
        c = channels
        chans = [(3, c, 2), (c, 2 * c, 2), (2 * c, 4 * c, 2), (4 * c, 8 * c, 1)]
        self.convs = nn.ModuleList(spectral_norm(nn.Conv2d(a, b, 4, stride=s, padding=1)) for a, b, s in chans)
        self.out = spectral_norm(nn.Conv2d(8 * c, 1, 4, stride=1, padding=1))

    def forward(self, x):
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return self.out(x)


class VGG19Features(nn.Module):
    """VGG-19 conv stack loaded from a local weights file; returns the named ReLU activations.

    Images in [-1, 1] are mapped to ImageNet normalization first. Frozen.
    """

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        layers, c = [], 3
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self._load(weights)
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def _load(self, path):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"vgg_weights: no file at {path!r} "
                                    "(nothing is downloaded; pass a local VGG-19 file)")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = self.features.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"vgg_weights {path!r} is not a VGG-19 state dict: missing {missing[:4]}...")

    def forward(self, x, names):
        x = ((x + 1) / 2 - self.mean) / self.std
        last, out = max(_RELU[n] for n in names), {}
        wanted = {_RELU[n]: n for n in names}
        for i, layer in enumerate(self.features[:last + 1]):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


class PVQVAELoss(nn.Module):
    """Eqs. 1 and 3-8 with the seed's weights; `adversarial` adds the discriminator (eq. 5),
    `vgg_weights` (a local file) turns on the perceptual and style terms (eqs. 6-7).

    adv_start: generator steps before the adversarial term is used (it stays 0 until then).
    """

    def __init__(self, *, adversarial: bool = True, vgg_weights: str | os.PathLike | None = None,
                 disc_channels: int = 64, adv_start: int = 0, lambda_grad: float = LAMBDA_GRAD,
                 lambda_adv: float = LAMBDA_ADV, lambda_perc: float = LAMBDA_PERC,
                 lambda_style: float = LAMBDA_STYLE, beta: float = BETA):
        super().__init__()
        self.weights = dict(grad=lambda_grad, adv=lambda_adv, perc=lambda_perc, style=lambda_style, commit=beta)
        self.discriminator = PatchDiscriminator(disc_channels) if adversarial else None
        self.vgg = VGG19Features(vgg_weights) if vgg_weights is not None else None
        self.adv_start = adv_start

    def generator_loss(self, out, step: int = 0) -> dict[str, torch.Tensor]:
        """out: a PVQVAEOutput. Returns the weighted total and each unweighted term (floats as tensors)."""
        x, xr = out.x_hat.float(), out.recon.float()
        zero = xr.new_zeros(())
        terms = {"pixel": (x - xr).abs().mean(), "grad": gradient_l1(x, xr), "commit": out.commit_loss.float(),
                 "adv": zero, "perc": zero, "style": zero}
        if self.discriminator is not None and step >= self.adv_start:
            logits = self.discriminator(xr)
            # Non-saturating generator form of eq. 5: -log D(x^R).
            terms["adv"] = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        if self.vgg is not None:
            names = PERC_LAYERS + STYLE_LAYERS
            fx, fr = self.vgg(x, names), self.vgg(xr, names)
            terms["perc"] = sum((fx[n] - fr[n]).abs().mean() for n in PERC_LAYERS)
            terms["style"] = sum((gram(fx[n]) - gram(fr[n])).abs().mean() for n in STYLE_LAYERS)
        total = terms["pixel"] + sum(self.weights[k] * terms[k] for k in ("grad", "adv", "perc", "style", "commit"))
        return {"total": total, **terms}

    def discriminator_loss(self, out) -> dict[str, torch.Tensor]:
        """Eq. 5 for D_adv: -log D(x_hat) - log(1 - D(x_hat^R)), reconstruction detached."""
        if self.discriminator is None:
            raise ValueError("this PVQVAELoss was built with adversarial=False: it has no discriminator")
        real = self.discriminator(out.x_hat.detach().float())
        fake = self.discriminator(out.recon.detach().float())
        loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        return {"total": loss, "real": torch.sigmoid(real).mean().detach(), "fake": torch.sigmoid(fake).mean().detach()}
