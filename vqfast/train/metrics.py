"""Standard metrics of a trained run, from libraries users trust: PSNR / SSIM (torchmetrics),
codebook usage and perplexity (vqfast.quantizers), FID and IS (torchmetrics' Frechet distance and
Inception Score on a local Inception file), LPIPS (a local VGG-16 + LPIPS heads file, read by
`VGGPerceptual.from_file`); nothing is downloaded.

    report = evaluate_run("runs/vq", data="path/to/images", inception_weights="pt_inception.pth",
                          lpips_weights="vgg16_lpips.safetensors")
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

_INCEPTION_HOWTO = ("pass --inception-weights PATH, a local Inception-v3 file: the TorchScript "
                    "inception-2015-12-05.pt of StyleGAN2-ADA / clean-fid, or torch-fidelity's "
                    "weights-inception-2015-12-05-6726825d.pth (needs torch-fidelity, which needs torchvision)")
FID_HINT, IS_HINT = (f"{name} skipped: {_INCEPTION_HOWTO}" for name in ("FID", "IS"))
LPIPS_HINT = ("LPIPS skipped: pass --lpips-weights PATH, a local VGG-16 + LPIPS file: torchvision's vgg16 state "
              "dict (features.<i>.weight|bias) with LPIPS's linear heads (lin<k>.model.1.weight), safetensors "
              "or .pth")


def _unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (float32)."""
    return ((x.float() + 1) / 2).clamp_(0, 1)


def psnr_ssim(real: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """PSNR (dB) and SSIM of fake against real, images [B, 3, H, W] in [-1, 1]; with a mask
    [B, H, W] (True = the pixels to score, e.g. the inpainted hole) both are averaged inside it."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if real.shape != fake.shape or real.dim() != 4:
        raise ValueError(f"real and fake must be [B, C, H, W] of one shape, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    a, b = _unit(real), _unit(fake)
    if mask is None:
        return {"psnr": float(peak_signal_noise_ratio(b, a, data_range=1.0)),
                "ssim": float(structural_similarity_index_measure(b, a, data_range=1.0))}
    if mask.shape != (real.shape[0], *real.shape[2:]) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool [{real.shape[0]}, {real.shape[2]}, {real.shape[3]}], got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    m = mask[:, None].expand_as(a)
    mse = ((a - b)[m] ** 2).mean()
    _, ssim_map = structural_similarity_index_measure(b, a, data_range=1.0, return_full_image=True)
    return {"psnr": float(10 * torch.log10(1.0 / mse.clamp_min(1e-12))), "ssim": float(ssim_map[m].mean())}


def codebook_stats(tokens: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Share of codes used and the perplexity of the code histogram of tokens (any shape)."""
    from vqfast.quantizers.stats import perplexity, usage
    return {"codebook_usage": usage(tokens, codebook_size), "perplexity": perplexity(tokens, codebook_size)}


class _TorchScriptInception(nn.Module):
    """The TorchScript Inception of StyleGAN2-ADA / clean-fid: images [B, 3, H, W] in [0, 1] -> 2048
    features, or with logits=True the log of its class probabilities [B, classes] (the archive
    returns softmax probabilities; softmax of their log gives them back, as Inception Score takes)."""

    def __init__(self, path: str, logits: bool = False):
        super().__init__()
        self.net = torch.jit.load(path, map_location="cpu").eval()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x.float() * 255, size=(299, 299), mode="bilinear", align_corners=False)
        if self.logits:
            return self.net(x, return_features=False).clamp_min(torch.finfo(torch.float32).tiny).log()
        return self.net(x, return_features=True)


class _FidelityInception(nn.Module):
    """torch-fidelity's Inception from its weights file: images in [0, 1] -> the named output
    ("2048" features or "logits_unbiased")."""

    def __init__(self, path: str, output: str):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", [output], feature_extractor_weights_path=path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x * 255).to(torch.uint8))[0]


def _inception(path: str | None, logits: bool) -> tuple[nn.Module | None, str]:
    name, hint = ("IS", IS_HINT) if logits else ("FID", FID_HINT)
    if path is None:
        return None, hint
    if not Path(path).is_file():
        raise ValueError(f"inception_weights: no file at {path!r}")
    try:
        return _TorchScriptInception(path, logits), ""
    except RuntimeError:  # not a TorchScript archive: torch-fidelity's state dict
        pass
    try:
        return _FidelityInception(path, "logits_unbiased" if logits else "2048"), ""
    except ImportError as err:
        return None, f"{name} skipped: {path} is not TorchScript and torch-fidelity does not import ({err}); {hint}"


def inception_features(path: str | None) -> tuple[nn.Module | None, str]:
    """(feature extractor for FID, "") from a local weights file, or (None, why it is skipped)."""
    return _inception(path, False)


def inception_logits(path: str | None) -> tuple[nn.Module | None, str]:
    """(class logits for Inception Score, "") from a local weights file, or (None, why it is skipped)."""
    return _inception(path, True)


def lpips_model(path: str | None) -> tuple[nn.Module | None, str]:
    """(LPIPS distance, "") from a local VGG-16 + LPIPS heads file, or (None, why it is skipped)."""
    from vqfast.models.common.losses import VGGPerceptual

    if path is None:
        return None, LPIPS_HINT
    if not Path(path).is_file():
        raise ValueError(f"lpips_weights: no file at {path!r}")
    return VGGPerceptual.from_file(path), ""


class FID:
    """Frechet distance between real and fake image sets (torchmetrics) on `features`' outputs.

        fid = FID(extractor); fid.update(real, real=True); fid.update(fake, real=False); fid.compute()
    """

    def __init__(self, features: nn.Module, device: str | torch.device = "cpu"):
        from torchmetrics.image.fid import FrechetInceptionDistance
        self.device = torch.device(device)
        self.metric = FrechetInceptionDistance(feature=features, normalize=True).to(self.device)

    def update(self, images: torch.Tensor, *, real: bool) -> None:
        """images [B, 3, H, W] in [-1, 1]; the extractor runs on `device`."""
        self.metric.update(_unit(images.to(self.device)), real=real)

    def compute(self) -> float:
        return float(self.metric.compute())


class InceptionScore:
    """exp(E_x KL(p(y|x) || p(y))) of a sample set (torchmetrics), mean and std over `splits`
    disjoint groups, from `logits` (a module: images [B, 3, H, W] in [0, 1] -> class logits) run on
    `device`. Under torch.distributed every rank calls `compute` and scores all ranks' images.

        score = InceptionScore(logits); score.update(samples); mean, std = score.compute(seed=0)
    """

    def __init__(self, logits: nn.Module, splits: int = 10, device: str | torch.device = "cpu"):
        from torchmetrics.image.inception import InceptionScore as _IS
        if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
            raise ValueError(f"splits must be a positive int, got {splits!r}")
        self.splits, self.device = splits, torch.device(device)
        with warnings.catch_warnings():  # it warns that it keeps every sample's logits: a few MB here
            warnings.simplefilter("ignore")
            # ranks with different numbers of updates break torchmetrics' own gather of this list
            # state (one collective per update): `compute` gathers it in one
            self.metric = _IS(feature=logits, splits=splits, normalize=False, sync_on_compute=False).to(self.device)

    def update(self, images: torch.Tensor) -> None:
        """images [B, 3, H, W] in [-1, 1]."""
        self.metric.update(_unit(images.to(self.device)))

    def compute(self, seed: int = 0, ctx=None) -> tuple[float, float]:
        """(mean, std) over the groups of a seeded shuffle: `splits` groups, fewer when there are
        not 2 images per group (a one-image group scores 1 whatever the images); std is nan for one.
        ctx: a `distributed.Context`: every rank calls this and scores every rank's images, in rank
        order."""
        if ctx is not None and ctx.distributed:
            from vqfast.train.distributed import gather_cat
            mine = torch.cat(self.metric.features) if self.metric.features else torch.empty(0)
            self.metric.features = [gather_cat(mine, ctx=ctx)[0].to(self.device)]
        n = sum(len(f) for f in self.metric.features)
        if n == 0:
            raise ValueError("InceptionScore.compute: no images were given to update")
        self.metric.splits = max(1, min(self.splits, n // 2))
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the std of one group
            torch.manual_seed(seed)  # torchmetrics shuffles the samples before splitting them
            mean, std = self.metric.compute()
        return float(mean), float(std)


def evaluate_run(run_dir: str | Path, *, data: str | None = None, batch_size: int = 16, max_images: int = 1000,
                 inception_weights: str | None = None, device: str | None = None,
                 sample_steps: int | None = None, lpips_weights: str | None = None,
                 dist_timeout: float = 600.0) -> dict:
    """Metrics of a run's latest weights on held-out images (see `vqfast.train.stage_metrics`);
    sample_steps: decoding steps of MaskGIT / VQ-DDM samples; inception_weights: FID, and IS of
    class-conditional samples; lpips_weights: LPIPS of reconstructions and inpaintings. Under
    torchrun the ranks share the images out (on their GPUs) and score them together. Writes
    RUN_DIR/metrics.json and returns the report (with a "<metric>_skipped" how-to per missing file)."""
    from vqfast import checkpoint
    from vqfast.train import distributed
    from vqfast.train.checkpointing import model_path
    from vqfast.train.data import open_images
    from vqfast.train.families import get_stage
    from vqfast.train.stage_metrics import stage_metrics

    for name, v in (("batch_size", batch_size), ("max_images", max_images), ("sample_steps", sample_steps)):
        if not (v is None and name == "sample_steps") and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise ValueError(f"{run_dir} is not a training run (no run.json)")
    try:
        cfg = json.loads((run_dir / "run.json").read_text())
        stage = get_stage(cfg["family"], cfg["stage"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{run_dir / 'run.json'} is not a training run's config: {err!r}") from None
    if device is not None:
        try:
            torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"device must name a torch device, got {device!r}: {err}") from None
    ctx = distributed.setup(device, dist_timeout)
    try:
        dev = ctx.device
        model = checkpoint.load(model_path(run_dir), map_location=dev).eval()
        tokenizer = (checkpoint.load(model_path(cfg["tokenizer"]), map_location=dev).eval()
                     if cfg.get("tokenizer") else None)
        resolution = stage.resolution(model, tokenizer)
        own = data is None or data == cfg["data"]
        images = open_images(cfg["data"] if own else data, resolution, split="test" if own else "train",
                             holdout=cfg["holdout"] if own else 0.0)
        features, why = inception_features(inception_weights)
        skipped = {"fid": why}
        logits = lpips = None
        if stage.name == "model" and stage.family != "put" and int(model.config.get("num_classes", 0) or 0):
            logits, skipped["is"] = inception_logits(inception_weights)
        if stage.name != "model" or stage.family == "put":
            lpips, skipped["lpips"] = lpips_model(lpips_weights)
        report = {"run": str(run_dir), "family": cfg["family"], "stage": cfg["stage"],
                  "images": min(len(images), max_images)}
        report.update(stage_metrics(stage, model, tokenizer, images, features, batch_size=batch_size,
                                    max_images=max_images, device=dev, seed=cfg["seed"], sample_steps=sample_steps,
                                    logits=logits, lpips=None if lpips is None else lpips.to(dev), ctx=ctx))
        for metric, why in skipped.items():
            if why:
                report[f"{metric}_skipped"] = why
                if ctx.is_main:
                    print(why)
        if ctx.is_main:
            (run_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        distributed.barrier(ctx)
    finally:
        distributed.teardown(ctx)
    return report
