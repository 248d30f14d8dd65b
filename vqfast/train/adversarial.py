"""The perceptual and adversarial terms the papers train their tokenizers with, around the
tokenizer's own loss (reconstruction + codebook terms).

VQGAN recipe (MaskGIT, VQ-DDM, RQ-VAE, MQ-VAE tokenizers), one training step:

    generator:      L_G = L_tok + lambda * w_disc * g,   g = -mean D(x_rec)
                    lambda = ||grad_{G_L} L_tok|| / (||grad_{G_L} g|| + 1e-4), clamped to [0, 1e4],
                    detached (VQGAN eq. 7, G_L the decoder's last layer); L_tok = reconstruction +
                    perceptual (LPIPS) + codebook terms, whose codebook part has no gradient at G_L
    discriminator:  L_D = 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(sg(x_rec))))   (hinge)

both from step `disc_start` on (before it D is neither used nor updated). PUT's P-VQVAE: eq. 8
inside `PVQVAELoss` (fixed weight 0.1, -log D(x^R)) and eq. 5 for D. D: a PatchGAN with its
own Adam (the generator's lr and betas).

    critic = TokenizerCritic(stage.gan, perceptual_weights=None, adversarial=True, disc_start=None,
                             lr=1e-4, betas=(0.5, 0.9), device=torch.device("cpu"))
    loss, real, fake = critic.generator_loss(model, images, masks, step)   # in the objective
    d_loss, terms = critic.discriminator_loss(real, fake)                  # if critic.active(step)
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from vqfast.models.common.losses import PatchDiscriminator, VGGPerceptual
from vqfast.models.common.outputs import LossOutput
from vqfast.train.optim import fused_adam, load_optimizer_state

PERCEPTUAL_HINT = ("perceptual term off: pass --perceptual-weights PATH, a local torchvision VGG-16 state dict "
                   "(safetensors or .pth; with LPIPS's lin<k>.model.1.weight heads for true LPIPS), or for PUT "
                   "a VGG-19 one, to train with the papers' perceptual loss")


@dataclass(frozen=True)
class GANRecipe:
    """A paper's adversarial settings. disc_start: steps before the GAN terms; disc_weight: w_disc
    (PUT: lambda_adv of eq. 8); depth / norm: the PatchGAN's; put: PUT's eq. 5 / 8 losses instead of
    the hinge + adaptive weight; disc_lr_scale: D's lr over the generator's."""

    disc_start: int
    disc_weight: float
    depth: int = 3
    norm: str = "batch"
    put: bool = False
    disc_lr_scale: float = 1.0


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """lambda of VQGAN eq. 7: ||d nll / d W|| / (||d g_loss / d W|| + 1e-4) at W = last_layer,
    clamped to [0, 1e4] and detached (a 0-dim float32 tensor). Both losses are scalars."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 (mean relu(1 - real) + mean relu(1 + fake)): the VQGAN discriminator's hinge loss (RQ-VAE
    scales it by w_disc, which Adam's update ignores up to its eps)."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def decoder_last_layer(model: nn.Module) -> torch.Tensor:
    """G_L of VQGAN eq. 7: the weight of the decoder's output conv (VQGAN, RQ-VAE, MQ-VAE)."""
    return model.decoder.net[-1].weight


def _init_discriminator(d: nn.Module, generator: torch.Generator) -> None:
    """pix2pix / taming's init: conv weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    with torch.no_grad():
        for m in d.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight_orig if hasattr(m, "weight_orig") else m.weight
                w.copy_(torch.randn(w.shape, generator=generator) * 0.02)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1.0 + torch.randn(m.weight.shape, generator=generator) * 0.02)
                m.bias.zero_()


class _TwoPass(nn.Module):
    """D on the real and on the fake batch in one forward (one DDP call), each batch alone through
    D so batch norm sees each on its own (as VQGAN's discriminator step)."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.discriminator(real), self.discriminator(fake)


class TokenizerCritic:
    """The perceptual module, discriminator and discriminator optimizer of one tokenizer run.

    recipe: the stage's GANRecipe; perceptual_weights: a local VGG-16 (PUT: VGG-19) file or None
    (no perceptual term); adversarial: train with the GAN; disc_start: None = the recipe's;
    lr, betas: the discriminator's Adam (lr times recipe.disc_lr_scale); seed: D's initial weights.
    """

    def __init__(self, recipe: GANRecipe, *, perceptual_weights: str | os.PathLike | None, adversarial: bool,
                 disc_start: int | None, lr: float, betas: tuple[float, float], device: torch.device,
                 seed: int = 0):
        self.recipe = recipe
        self.disc_start = recipe.disc_start if disc_start is None else disc_start
        with torch.random.fork_rng(devices=[]):  # module defaults draw from a seeded generator, not the run's
            torch.manual_seed(seed)
            self._build(perceptual_weights, adversarial, device)
        self.has_perceptual = perceptual_weights is not None
        self.optimizer = self.pair = None
        if self.discriminator is not None:
            _init_discriminator(self.discriminator, torch.Generator().manual_seed(seed))
            self.discriminator.train()
            self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr * recipe.disc_lr_scale,
                                              betas=betas, fused=fused_adam(list(self.discriminator.parameters())))
            self.pair = _TwoPass(self.discriminator)

    def _build(self, perceptual_weights, adversarial: bool, device: torch.device) -> None:
        recipe = self.recipe
        if recipe.put:
            from vqfast.models.put.losses import PVQVAELoss
            with warnings.catch_warnings():  # the run log says how to turn the VGG terms on
                warnings.simplefilter("ignore")
                self.put_loss = PVQVAELoss(adversarial=adversarial, vgg_weights=perceptual_weights,
                                           adv_start=self.disc_start, lambda_adv=recipe.disc_weight).to(device)
            self.perceptual, self.discriminator = None, self.put_loss.discriminator
        else:
            self.put_loss = None
            self.perceptual = VGGPerceptual.from_file(perceptual_weights).to(device) if perceptual_weights else None
            self.discriminator = (PatchDiscriminator(depth=recipe.depth, norm=recipe.norm).to(device)
                                  if adversarial else None)

    def active(self, step: int) -> bool:
        """Whether step (0-based) trains with the GAN terms."""
        return self.discriminator is not None and step >= self.disc_start

    def wrap(self, wrapper) -> None:
        """Wrap the discriminator's forward for data parallelism (e.g. DistributedDataParallel)."""
        if self.pair is not None:
            self.pair = wrapper(self.pair)

    def sync(self, sync: bool):
        """Context: discriminator gradients are reduced over ranks on the last micro-batch only."""
        if not sync and hasattr(self.pair, "no_sync"):
            return self.pair.no_sync()
        return contextlib.nullcontext()

    def _frozen(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The discriminator's parameters detached (the generator step must not train D)."""
        return {prefix + k: p.detach() for k, p in self.discriminator.named_parameters()}

    def generator_loss(self, model: nn.Module, images: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor] | None,
                       step: int) -> tuple[LossOutput, torch.Tensor, torch.Tensor]:
        """(the generator's LossOutput, real images D sees, reconstruction) of one batch; images
        [B, C, H, W] in [-1, 1], masks: PUT's (m, m') of eq. 1, bool [B, H, W] each (else None). Once
        active, terms add g_loss and d_weight (lambda * w_disc; PUT: lambda_adv)."""
        if self.put_loss is not None:
            return self._put_generator_loss(model, images, masks, step)
        out = model(images, perceptual=self.perceptual)
        total, terms = out.loss
        fake = out.reconstruction
        if not self.active(step):
            return out.loss, images, fake
        logits = functional_call(self.discriminator, self._frozen(), (fake,))
        g_loss = -logits.float().mean()
        d_weight = adaptive_weight(total, g_loss, decoder_last_layer(model)) * self.recipe.disc_weight
        total = total + d_weight * g_loss
        return LossOutput(total, {**terms, "g_loss": g_loss.detach(), "d_weight": d_weight}), images, fake

    def _put_generator_loss(self, model, images, masks, step):
        seen = {}
        frozen = self._frozen("discriminator.") if self.discriminator is not None else {}

        def loss_fn(target, reconstruction, commitment, step):
            seen["real"] = target  # x_hat, the masked image: what D_adv of eq. 5 calls real
            return functional_call(self.put_loss, frozen, (target, reconstruction, commitment, step))

        out = model(images, *masks, loss_fn=loss_fn, step=step)
        terms = dict(out.loss.terms)
        if self.active(step):
            terms.update(g_loss=terms["adv"], d_weight=torch.tensor(self.recipe.disc_weight))
        return LossOutput(out.loss.total, terms), seen["real"], out.reconstruction

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(D's loss, its logged terms) on real images and a detached reconstruction."""
        logits_real, logits_fake = self.pair(real.detach(), fake.detach())
        if self.put_loss is not None:  # eq. 5: -log D(x_hat) - log(1 - D(x_hat^R))
            loss = (F.binary_cross_entropy_with_logits(logits_real.float(), torch.ones_like(logits_real.float()))
                    + F.binary_cross_entropy_with_logits(logits_fake.float(), torch.zeros_like(logits_fake.float())))
        else:
            loss = hinge_d_loss(logits_real, logits_fake)
        return loss, {"d_loss": loss.detach(), "logits_real": logits_real.detach().float().mean(),
                      "logits_fake": logits_fake.detach().float().mean()}

    def step(self) -> None:
        """One discriminator optimizer step (after its gradients of a training step)."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """D's weights and optimizer state ({} without a discriminator)."""
        if self.discriminator is None:
            return {}
        return {"weights": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict, step: int) -> None:
        """Restore what `state_dict` returned at `step`. A checkpoint without a discriminator (a run
        without one) resumes exactly before disc_start: D is neither run nor updated before it."""
        if self.discriminator is None:
            return
        if not state:
            if step <= self.disc_start:
                return
            raise ValueError(f"the checkpoint (step {step}) holds no discriminator but this run's starts at step "
                             f"{self.disc_start}: resume with --no-adversarial, or a --disc-start of at least {step}")
        self.discriminator.load_state_dict(state["weights"])
        load_optimizer_state(self.optimizer, state["optimizer"])
