"""Standard metrics of a trained run, from libraries users trust: PSNR / SSIM (torchmetrics),
codebook usage and perplexity (vqfast.quantizers), FID (torchmetrics' Frechet distance on the
features of a local Inception file; nothing is downloaded).

    report = evaluate_run("runs/vq", data="path/to/images", inception_weights="pt_inception.pth")
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

FID_HINT = ("FID skipped: pass --inception-weights PATH, a local Inception-v3 file: the TorchScript "
            "inception-2015-12-05.pt of StyleGAN2-ADA / clean-fid, or torch-fidelity's "
            "weights-inception-2015-12-05-6726825d.pth (needs torch-fidelity, which needs torchvision)")


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
    """The TorchScript Inception of StyleGAN2-ADA / clean-fid: images in [0, 1] -> 2048 features."""

    def __init__(self, path: str):
        super().__init__()
        self.net = torch.jit.load(path, map_location="cpu").eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x.float() * 255, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x, return_features=True)


def inception_features(path: str | None) -> tuple[nn.Module | None, str]:
    """(feature extractor for FID, "") from a local weights file, or (None, why it is skipped)."""
    if path is None:
        return None, FID_HINT
    if not Path(path).is_file():
        raise ValueError(f"inception_weights: no file at {path!r}")
    try:
        return _TorchScriptInception(path), ""
    except RuntimeError:  # not a TorchScript archive: torch-fidelity's state dict
        pass
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        return None, f"FID skipped: {path} is not TorchScript and torch-fidelity does not import ({err}); {FID_HINT}"

    class _Fidelity(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=path)

        def forward(self, x):
            return self.net((x * 255).to(torch.uint8))[0]

    return _Fidelity(), ""


class FID:
    """Frechet distance between real and fake image sets (torchmetrics) on `features`' outputs.

        fid = FID(extractor); fid.update(real, real=True); fid.update(fake, real=False); fid.compute()
    """

    def __init__(self, features: nn.Module):
        from torchmetrics.image.fid import FrechetInceptionDistance
        self.metric = FrechetInceptionDistance(feature=features, normalize=True)

    def update(self, images: torch.Tensor, *, real: bool) -> None:
        """images [B, 3, H, W] in [-1, 1]."""
        self.metric.update(_unit(images).cpu(), real=real)

    def compute(self) -> float:
        return float(self.metric.compute())


def evaluate_run(run_dir: str | Path, *, data: str | None = None, batch_size: int = 16, max_images: int = 1000,
                 inception_weights: str | None = None, device: str | None = None,
                 sample_steps: int | None = None) -> dict:
    """Metrics of a run's latest weights on held-out images (see `vqfast.train.stage_metrics`);
    sample_steps: decoding steps of MaskGIT / VQ-DDM samples. Writes RUN_DIR/metrics.json and
    returns the report."""
    from vqfast import checkpoint
    from vqfast.train.checkpointing import model_path
    from vqfast.train.data import open_images
    from vqfast.train.families import get_stage
    from vqfast.train.stage_metrics import stage_metrics

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise ValueError(f"{run_dir} is not a training run (no run.json)")
    cfg = json.loads((run_dir / "run.json").read_text())
    stage = get_stage(cfg["family"], cfg["stage"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = checkpoint.load(model_path(run_dir), map_location=dev).eval()
    tokenizer = checkpoint.load(model_path(cfg["tokenizer"]), map_location=dev).eval() if cfg.get("tokenizer") else None
    resolution = stage.resolution(model, tokenizer)
    own = data is None or data == cfg["data"]
    images = open_images(cfg["data"] if own else data, resolution, split="test" if own else "train",
                         holdout=cfg["holdout"] if own else 0.0)
    features, why = inception_features(inception_weights)
    report = {"run": str(run_dir), "family": cfg["family"], "stage": cfg["stage"],
              "images": min(len(images), max_images)}
    report.update(stage_metrics(stage, model, tokenizer, images, features, batch_size=batch_size,
                                max_images=max_images, device=dev, seed=cfg["seed"], sample_steps=sample_steps))
    if why:
        report["fid_skipped"] = why
        print(why)
    (run_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    return report
