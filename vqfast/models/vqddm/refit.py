"""ReFiT for a VQGAN tokenizer (VQ-DDM Sec. 3.2, 4.1-4.2): rebuild the codebook, then
fine-tune the decoder with the encoder frozen.

1. `refit_tokenizer`: P = 20k pre-quantization features (image uniform with
   replacement, then a uniform position), AFK-MC2 seeding (chain length m = 200), full
   k-means, centroids replace the codebook (optionally shrinking K, e.g. 1024 -> 512);
   reports codebook usage before/after (Table 1's indicator) through
   `vqfast.quantizers.refit`.
2. `finetune_decoder`: the encoder (and quant_conv) frozen; the decoder, post_quant_conv
   and the codebook (EMA, or gradients when the quantizer has no EMA) keep training on
   the reconstruction loss (+ an optional adversarial term); defaults: the paper's
   settings `REFIT_SETTINGS` (Sec. 4.1: decoder lr 1e-6, discriminator lr 2e-6, batch 8,
   no restart of the rebuilt codes).

    report = refit_tokenizer(vq, train_images, P=20000, K=512, heldout=test_images, generator=0)
    print(report.usage_before, report.usage_after)
    finetune_decoder(vq, CropSampler("train", 32), steps=200, generator=0)   # REFIT_SETTINGS
"""
from __future__ import annotations

import torch

from vqfast.quantizers.refit import RefitReport, refit
from vqfast.progress import progress_bar
from vqfast.random import as_generator


class _Features:
    """The ReFiT tokenizer protocol over a VQGAN: pre-quantization features [B, d, h, w]."""

    def __init__(self, vq):
        self.vq, self.quantizer = vq, vq.quantizer

    def encode_features(self, images: torch.Tensor) -> torch.Tensor:
        self.vq._check_images(images)
        return self.vq.quant_conv(self.vq.encoder(images))


@torch.no_grad()
def refit_tokenizer(vq, images: torch.Tensor, P: int = 20000, K: int | None = None, *,
                    heldout: torch.Tensor | None = None, iters: int = 300, chain_length: int = 200,
                    tol: float = 1e-4, generator: torch.Generator | int | None = None,
                    batch_size: int = 64) -> RefitReport:
    """Rebuild vq's codebook from P encoder features of images [N, C, R, R] (k-means, AFK-MC2
    seeding with chain length m); K: new codebook size (default: keep); generator: the feature
    draws and the seeding (torch.Generator, int seed or None). Returns RefitReport
    (usage_before, usage_after on heldout, default images; kmeans result)."""
    was_training = vq.training
    vq.eval()
    try:
        return refit(_Features(vq), images, P, K, heldout=heldout, iters=iters, init="afkmc2",
                     chain_length=chain_length, tol=tol, generator=as_generator(generator),
                     batch_size=batch_size)
    finally:
        vq.train(was_training)


# Sec. 4.1: "freeze the encoder and set the learning rate of the decoder to 1e-6 and the learning
# rate of the discriminator to 2e-6 with 8 instances per batch"; the rebuilt codes are kept as
# they are (no restart of unused codes while fine-tuning).
REFIT_SETTINGS = dict(lr=1e-6, discriminator_lr=2e-6, batch_size=8, restart_codes=False)


def finetune_decoder(vq, data, steps: int, *, batch_size: int = 8, lr: float = 1e-6, adversarial=None,
                     discriminator_lr: float = 2e-6, restart_codes: bool = False,
                     generator: torch.Generator | int | None = None, log: list | None = None,
                     progress: bool = False) -> int:
    """Fine-tune vq's decoder (+ post_quant_conv, + codebook) on crops from data
    (`data.sample(n, generator)` -> images) with the encoder and quant_conv frozen. Defaults:
    the paper's settings (`REFIT_SETTINGS`). adversarial: a `vqfast.models.common.losses.HingeGAN`
    (its generator term joins the loss; its discriminator trains with Adam at discriminator_lr);
    restart_codes: allow the quantizer's dead-code restart while fine-tuning (default off: the
    rebuilt codebook is kept). generator: the crops' randomness (torch.Generator, int seed or None).
    Returns the steps run; log collects (step, reconstruction loss)."""
    for name, v in (("lr", lr), ("discriminator_lr", discriminator_lr)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    frozen = [vq.encoder, vq.quant_conv]
    for m in frozen:
        m.requires_grad_(False)
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))
    opt_d = None if adversarial is None else torch.optim.Adam(adversarial.parameters(), lr=discriminator_lr,
                                                                betas=(0.5, 0.9))
    book = vq.quantizer.codebook_state
    threshold = book.threshold_dead_code
    if not restart_codes:
        book.threshold_dead_code = 0.0
    g = as_generator(generator)
    vq.train()
    for m in frozen:
        m.eval()
    bar = progress_bar(steps, "decoder fine-tune", progress)
    try:
        for step in range(steps):
            images = data.sample(batch_size, g)
            rec, _, (loss, logs) = vq(images, adversarial=adversarial)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if opt_d is not None:
                d_loss = adversarial.discriminator_loss(images, rec.detach())
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            if log is not None:
                log.append((step, float(logs["rec"])))
            bar.update(1)
    finally:
        bar.close()
        book.threshold_dead_code = threshold
        for m in frozen:
            m.requires_grad_(True)
        vq.eval()
    return steps
