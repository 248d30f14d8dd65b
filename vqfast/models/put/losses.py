"""P-VQVAE training loss (PUT supp. eqs. 1, 3-8).

L_vae = L_rec(x_hat, x_hat^R) + beta ||sg(e_hat) - f_hat||^2 (beta = 0.25; the codebook term
of eq. 1 is replaced by the EMA update of eq. 2 inside the quantizer), with
L_rec = L_pixel + 5 L_grad + 0.1 L_adv + 0.1 L_perc + 250 L_style (eq. 8).

The perceptual and style terms (eqs. 6-7) need VGG-19 weights. Nothing is downloaded:
pass `vgg_weights=<path>` to a local file (torchvision's `vgg19` state dict, `.pth` or
`.safetensors`, keys `features.<i>.weight|bias`); without it these two terms are off
(reported as 0), the loss is pixel + gradient + adversarial + commitment, building the loss
warns once, and `loss_fn.vgg_terms` is False (for run logs).

    loss_fn = PVQVAELoss()                                   # adversarial on, VGG terms off
    out = vae(x, mask, ref_mask, loss_fn=loss_fn, step=step) # out.loss: LossOutput of eq. 1
    out.loss.total.backward()
    loss_fn.discriminator_loss(x * ~mask[:, None], out.reconstruction).total.backward()
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.common.losses import PatchDiscriminator, VGGFeatures
from vqfast.models.common.outputs import LossOutput, loss_output

# Eq. 8 weights and eq. 1's beta.
LAMBDA_GRAD, LAMBDA_ADV, LAMBDA_PERC, LAMBDA_STYLE, BETA = 5.0, 0.1, 0.1, 250.0, 0.25

# The VGG-19 ReLUs of supp. Sec. 2: eq. 6 (perceptual) and eq. 7 (style).
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


class PVQVAELoss(nn.Module):
    """Eqs. 1 and 3-8 with the paper's weights; `adversarial` adds the discriminator D_adv of
    eq. 5 (`PatchDiscriminator(channels=disc_channels, norm="spectral")`), `vgg_weights` (a
    local file) turns on the perceptual and style terms (eqs. 6-7).

    adv_start: generator steps before the adversarial term is used (it stays 0 until then).
    vgg_terms: whether the perceptual and style terms are on (a VGG file was given); without
    one, construction warns that eq. 8 runs without them.
    """

    def __init__(self, *, adversarial: bool = True, vgg_weights: str | os.PathLike | None = None,
                 disc_channels: int = 64, adv_start: int = 0, lambda_grad: float = LAMBDA_GRAD,
                 lambda_adv: float = LAMBDA_ADV, lambda_perc: float = LAMBDA_PERC,
                 lambda_style: float = LAMBDA_STYLE, beta: float = BETA):
        super().__init__()
        if vgg_weights is not None and not os.path.isfile(vgg_weights):
            raise FileNotFoundError(f"vgg_weights: no file at {os.fspath(vgg_weights)!r} "
                                    "(nothing is downloaded; pass a local VGG-19 file)")
        self.weights = dict(grad=lambda_grad, adv=lambda_adv, perc=lambda_perc, style=lambda_style, commit=beta)
        self.discriminator = PatchDiscriminator(channels=disc_channels, norm="spectral") if adversarial else None
        self.vgg = VGGFeatures.from_file(vgg_weights, depth=19) if vgg_weights is not None else None
        self.vgg_terms = self.vgg is not None
        if not self.vgg_terms:
            warnings.warn("PVQVAELoss: no vgg_weights file given, so the perceptual and style terms of PUT eq. 8 "
                          "(weights 0.1 and 250) are off; pass a local VGG-19 file to turn them on", stacklevel=2)
        self.adv_start = adv_start

    def forward(self, target: torch.Tensor, reconstruction: torch.Tensor, commitment: torch.Tensor,
                step: int = 0) -> LossOutput:
        """Eq. 1 for the generator: target x_hat [B,3,H,W] (the masked image), reconstruction
        x_hat^R [B,3,H,W], commitment ||sg(e_hat) - f_hat||^2 (scalar, unweighted); step: the
        training step (for adv_start). Terms: pixel, grad, commit, adv, perc, style (unweighted)."""
        x, xr = target.float(), reconstruction.float()
        zero = xr.new_zeros(())
        terms = {"pixel": (x - xr).abs().mean(), "grad": gradient_l1(x, xr), "commit": commitment.float(),
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
        return loss_output(total, **terms)

    def discriminator_loss(self, target: torch.Tensor, reconstruction: torch.Tensor) -> LossOutput:
        """Eq. 5 for D_adv: -log D(x_hat) - log(1 - D(x_hat^R)), reconstruction detached.
        Terms: real, fake (mean D on each)."""
        if self.discriminator is None:
            raise ValueError("this PVQVAELoss was built with adversarial=False: it has no discriminator")
        real = self.discriminator(target.detach().float())
        fake = self.discriminator(reconstruction.detach().float())
        loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        return loss_output(loss, real=torch.sigmoid(real).mean(), fake=torch.sigmoid(fake).mean())
