"""The trainable stages of the five families, behind one interface the loop drives.

Stage 1 ("tokenizer") trains the family's tokenizer on images with its own loss
(`tokenizer(images).loss`) plus the paper's perceptual and adversarial terms (`Stage.gan`, run by
`vqfast.train.adversarial.TokenizerCritic`); stage 2 ("model") trains the token model on the tokens of a
frozen, trained tokenizer (`model.loss(tokens, ...)`); VQ-DDM adds "refit" (VQ-DDM Sec. 3.2:
rebuild the codebook by k-means, then fine-tune the decoder with the encoder frozen).

    stage = get_stage("maskgit", "model")
    net = stage.build("tiny", tokenizer=vq)
    inputs = stage.encode(vq, images, labels, generator)    # cacheable token inputs
    loss = stage.loss(net, inputs, generator, tokenizer=vq)   # LossOutput
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from vqfast.data import make_masks
from vqfast.random import as_generator
from vqfast.train.adversarial import GANRecipe

FAMILIES = ("maskgit", "put", "mqvae", "rq", "vqddm")
_PUT_MASK_KINDS = ("box", "strokes", "half", "outside")


@dataclass(frozen=True)
class Optim:
    """AdamW settings of a stage (the papers' values; warmup in steps)."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup: int = 0


def _cls(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _classes(model: nn.Module) -> int:
    return int(model.config.get("num_classes", 0) or 0)


def _labels(model: nn.Module, labels: torch.Tensor) -> torch.Tensor | None:
    """Class labels for a class-conditional model (None for an unconditional one); their range is
    checked once over the whole dataset (`check_classes`) and by the model."""
    return labels if _classes(model) else None


def check_classes(model: nn.Module, data) -> None:
    """Before training: a class-conditional model needs labels of at most its num_classes
    classes (data: an image dataset with `classes`, or a token cache with `rows["labels"]`)."""
    n = _classes(model)
    if n == 0:
        return
    if hasattr(data, "rows"):
        labels = data.rows["labels"]
        low, count = int(labels.min()), int(labels.max()) + 1
    else:
        low, count = 0, data.num_classes
    if low < 0 or count == 0:
        raise ValueError(f"the model is class-conditional (num_classes={n}) but the data has no class labels: use a "
                         f"folder whose images lie in class subfolders, or an unconditional preset")
    if count > n:
        raise ValueError(f"the data has {count} classes but the model has num_classes={n}: pass --override "
                         f"num_classes={count}, or use a folder of at most {n} class subfolders")


@dataclass(frozen=True)
class Stage:
    """One stage of one family: which class it trains, its optimizer, how a batch becomes a loss.

    encode(tokenizer, images, labels, generator) -> dict of tensors (the model's inputs; a
    token cache stores them when `cacheable`); loss(model, inputs, generator, tokenizer) ->
    LossOutput. gan: the paper's adversarial settings (tokenizer stages)."""

    family: str
    name: str
    model_class: str
    optim: Optim
    tokenizer_class: str | None = None
    unit: str = "img"
    cacheable: bool = False
    extra: dict = field(default_factory=dict)
    gan: GANRecipe | None = None

    @property
    def cls(self) -> type:
        return _cls(self.model_class)

    @property
    def tokenizer_cls(self) -> type | None:
        return _cls(self.tokenizer_class) if self.tokenizer_class else None

    @property
    def needs_tokenizer(self) -> bool:
        return self.tokenizer_class is not None

    def presets(self) -> list[str]:
        return sorted(self.cls.PRESETS)

    def build(self, preset: str, *, tokenizer: nn.Module | None = None, overrides: dict | None = None) -> nn.Module:
        """The model of `preset` with `overrides` of its constructor arguments; in stage 2 the
        tokenizer decides the vocabulary and token grid (the preset's values are replaced by the
        tokenizer's)."""
        overrides = overrides or {}
        if self.name == "refit":
            if overrides:
                raise ValueError(f"overrides: the refit stage trains the given tokenizer as it is, got {overrides}")
            return tokenizer
        if tokenizer is None:
            return self.cls.from_preset(preset, **overrides)
        fit = _fit(self.family, self.cls.PRESETS.get(preset, {}), tokenizer)
        model = self.cls.from_preset(preset, **{**overrides, **fit})
        _check_vocabulary(model, tokenizer)
        return model

    def resolution(self, model: nn.Module, tokenizer: nn.Module | None) -> int:
        """The image side the stage reads."""
        return int((tokenizer if tokenizer is not None else model).config["resolution"])

    @torch.no_grad()
    def encode(self, tokenizer: nn.Module | None, images: torch.Tensor, labels: torch.Tensor,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.name != "model":
            return {"images": images, "labels": labels}
        if self.family == "put":  # the UQ-Transformer reads features of masked images: built per step
            return {"images": images, "labels": labels}
        enc = tokenizer.encode(images)
        if self.family == "mqvae":
            return {"tokens": enc.tokens, "positions": enc.positions, "labels": labels}
        tokens = enc if isinstance(enc, torch.Tensor) else enc.tokens
        return {"tokens": tokens, "labels": labels}

    def loss(self, model: nn.Module, inputs: dict, generator: torch.Generator, *, tokenizer: nn.Module | None = None,
             sampler=None):
        """One batch -> LossOutput (the family's training objective)."""
        f = self.family
        if self.name in ("tokenizer", "refit"):
            images = inputs["images"]
            if f == "put":
                return model(images, *self.masks(images, generator)).loss
            return model(images).loss
        labels = _labels(model, inputs["labels"])
        if f == "put":
            from vqfast.models.put import uq_training_batch
            images = inputs["images"]
            return model.loss(uq_training_batch(tokenizer, images, _put_masks(images, generator), generator=generator))
        if f == "mqvae":
            return model.loss(inputs["tokens"], inputs["positions"], class_labels=labels, generator=generator)
        tokens = inputs["tokens"]
        if f == "maskgit":
            tokens = tokens.flatten(1)
        if f == "vqddm":  # sampler: the timestep importance sampler (None: uniform t)
            return model.loss(tokens, class_labels=labels, generator=generator, sampler=sampler)
        return model.loss(tokens, class_labels=labels, generator=generator)

    def masks(self, images: torch.Tensor, generator: torch.Generator | int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The masks bool [B, H, W] (True = missing) a PUT tokenizer trains with, (m, m') of eq. 1:
        the input's missing pixels and an independent reference mask, off (all visible) for a
        quarter of the images; None for other families."""
        if self.family != "put" or self.name == "model":
            return None
        generator = as_generator(generator)
        mask, ref = _put_masks(images, generator), _put_masks(images, generator)
        keep = torch.rand(images.shape[0], generator=generator) < 0.75
        return mask, ref & keep.to(ref.device)[:, None, None]

    def prepare(self, model: nn.Module, data, generator: torch.Generator) -> None:
        """What a stage does once before its first step: ReFiT's codebook rebuild, and
        freezing the encoder whose features the new codebook was fitted to."""
        if self.name != "refit":
            return
        from vqfast.models.vqddm.refit import refit_tokenizer
        n = min(len(data), self.extra["refit_images"])
        images = torch.stack([data[i][0] for i in range(n)]).to(next(model.parameters()).device)
        refit_tokenizer(model, images, P=self.extra["refit_features"], generator=generator)

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the optimizer updates (ReFiT: all but the encoder and quant_conv; the
        rebuilt codebook is kept: no dead-code restart while fine-tuning, as finetune_decoder)."""
        if self.name == "refit":
            frozen = {id(p) for m in (model.encoder, model.quant_conv) for p in m.parameters()}
            for p in model.parameters():
                p.requires_grad_(id(p) not in frozen)
            model.quantizer.codebook_state.threshold_dead_code = 0.0
        return [p for p in model.parameters() if p.requires_grad]


def timestep_sampler(stage: Stage, model: nn.Module, gather):
    """VQ-DDM's model stage: the importance sampler of t (p(t) ~ sqrt(E[L_t^2]), as the official
    code trains), fed every rank's (t, L_t) through gather(t, losses) -> (all t, all losses), so
    every rank keeps the same p(t). Other stages: None."""
    if stage.family != "vqddm" or stage.name != "model":
        return None
    from vqfast.models.vqddm import ImportanceSampler

    class _Gathered(ImportanceSampler):
        def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
            super().update(*gather(t, losses))

    return _Gathered(model.T)


def _put_masks(images: torch.Tensor, generator: torch.Generator | int) -> torch.Tensor:
    """Missing-pixel masks of mixed kinds, one kind per image (PUT Sec. 4: free-form and box masks)."""
    generator = as_generator(generator)
    n, _, h, w = images.shape
    kinds = torch.randint(len(_PUT_MASK_KINDS), (n,), generator=generator).tolist()
    masks = [make_masks(_PUT_MASK_KINDS[k], 1, h, w, generator=generator)[0] for k in kinds]
    return torch.stack(masks).to(images.device)


def _fit(family: str, preset: dict, tokenizer: nn.Module) -> dict:
    """Constructor overrides that make a token model read the tokenizer's tokens."""
    K = tokenizer.codebook_size
    fit = {"put": {"vocab_size": K}}.get(family, {"codebook_size": K})
    shape = getattr(tokenizer, "token_shape", None)
    if family == "maskgit" and shape is not None:
        fit["seq_len"] = math.prod(shape[:2])
    if family == "vqddm" and shape is not None:
        fit["size"] = shape[0]
    return {k: v for k, v in fit.items() if k in preset and preset[k] != v}


def _check_vocabulary(model: nn.Module, tokenizer: nn.Module) -> None:
    K = getattr(tokenizer, "codebook_size", None)
    if K is None:
        return
    for key in ("codebook_size", "vocab_size"):
        if key in model.config and model.config[key] != K:
            raise ValueError(f"{type(model).__name__} has {key}={model.config[key]} but the tokenizer has "
                             f"{K} codes: pick a preset that matches the tokenizer")


_M = "vqfast.models."
# The GANs of the tokenizers. VQGAN (MaskGIT Sec. 4.1 and VQ-DDM Sec. 4 train taming's VQGAN):
# LPIPS weight 1, hinge PatchGAN of 3 layers with w_disc = 0.8 from step 250001 (taming's ImageNet
# VQGAN). RQ-VAE: LPIPS 1, 2-layer PatchGAN with w_disc = 0.75 from the start; MQ-VAE's supplement
# takes RQ-VAE's setting (perceptual 1.0, adversarial 0.75). PUT: eq. 8 (lambda_adv = 0.1) with
# EdgeConnect's spectral-norm discriminator (eq. 5). VQ-DDM's ReFiT (Sec. 4) fine-tunes the decoder
# against the discriminator at twice the decoder's learning rate (1e-6 and 2e-6).
_TAMING = GANRecipe(disc_start=250001, disc_weight=0.8)
_RQ = GANRecipe(disc_start=0, disc_weight=0.75, depth=2)
STAGES: dict[str, dict[str, Stage]] = {
    # MaskGIT Sec. 4.1: VQGAN, then the bidirectional transformer with AdamW (0.9, 0.96),
    # weight decay 4.5e-2, 5k warmup steps.
    "maskgit": {
        "tokenizer": Stage("maskgit", "tokenizer", _M + "common.vqgan.VQGAN", Optim(1e-4, (0.5, 0.9)), gan=_TAMING),
        "model": Stage("maskgit", "model", _M + "maskgit.BidirectionalTransformer",
                       Optim(1e-4, (0.9, 0.96), 4.5e-2, 5000), _M + "common.vqgan.VQGAN", "tok", True),
    },
    # PUT: P-VQVAE with VQGAN's Adam (0.5, 0.9); UQ-Transformer AdamW with warmup then cosine decay.
    "put": {
        "tokenizer": Stage("put", "tokenizer", _M + "put.PVQVAE", Optim(2e-4, (0.5, 0.9)),
                           gan=GANRecipe(disc_start=0, disc_weight=0.1, norm="spectral", put=True)),
        "model": Stage("put", "model", _M + "put.UQTransformer", Optim(3e-4, (0.9, 0.95), 0.01, 5000),
                       _M + "put.PVQVAE"),
    },
    # MQ-VAE supplement: Adam (0.5, 0.9), base lr 4.5e-6 scaled by the global batch (8 GPUs x 8);
    # Stackformer: AdamW (0.9, 0.95), weight decay 0.01, cosine decay from 5e-4.
    "mqvae": {
        "tokenizer": Stage("mqvae", "tokenizer", _M + "mqvae.MQVAE", Optim(4.5e-6 * 64, (0.5, 0.9), 0.0, 500), gan=_RQ),
        "model": Stage("mqvae", "model", _M + "mqvae.Stackformer", Optim(5e-4, (0.9, 0.95), 0.01, 5000),
                       _M + "mqvae.MQVAE", "tok", True),
    },
    # RQ-VAE: Adam (0.5, 0.9) lr 4e-5; RQ-Transformer (supplement): AdamW (0.9, 0.95), weight
    # decay 1e-4, cosine schedule from 1e-4 to 0.
    "rq": {
        "tokenizer": Stage("rq", "tokenizer", _M + "rq.RQVAE", Optim(4e-5, (0.5, 0.9)), gan=_RQ),
        "model": Stage("rq", "model", _M + "rq.ContextualRQTransformer", Optim(1e-4, (0.9, 0.95), 1e-4, 5000),
                       _M + "rq.RQVAE", "tok", True),
    },
    # VQ-DDM Sec. 4: the VQGAN tokenizer (VQGAN's training strategy), ReFiT (Sec. 3.2), then the
    # discrete diffusion model.
    "vqddm": {
        "tokenizer": Stage("vqddm", "tokenizer", _M + "common.vqgan.VQGAN", Optim(1e-4, (0.5, 0.9)), gan=_TAMING),
        "refit": Stage("vqddm", "refit", _M + "common.vqgan.VQGAN", Optim(1e-4, (0.5, 0.9)),
                       _M + "common.vqgan.VQGAN", extra={"refit_images": 1024, "refit_features": 20000},
                       gan=GANRecipe(disc_start=0, disc_weight=0.8, disc_lr_scale=2.0)),
        "model": Stage("vqddm", "model", _M + "vqddm.VQDDM", Optim(2e-4, (0.9, 0.999), 0.0, 1000),
                       _M + "common.vqgan.VQGAN", "tok", True),
    },
}


def get_stage(family: str, stage: str) -> Stage:
    """The Stage of a family ("maskgit", "put", "mqvae", "rq", "vqddm") and stage name."""
    if family not in STAGES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if stage not in STAGES[family]:
        raise ValueError(f"{family} has the stages {tuple(STAGES[family])}, got stage={stage!r}")
    return STAGES[family][stage]
