"""`python -m vqfast train ...` and `python -m vqfast eval ...`: argument parsers and entry points."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from vqfast.train.families import FAMILIES, STAGES


def _preset_help() -> str:
    lines = ["presets (FAMILY / stage: names):"]
    for family, stages in STAGES.items():
        for name, stage in stages.items():
            if name == "refit":
                lines.append(f"  {family:<8} {name:<9}  (the tokenizer's own: pass --tokenizer)")
                continue
            lines.append(f"  {family:<8} {name:<9}  {', '.join(stage.presets())}")
    return "\n".join(lines)


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one stage of a family on a folder of images (torchrun for DDP)",
                       description="Train one stage of a model family. One process: python -m vqfast train ...; "
                                   "several: torchrun --nproc_per_node N -m vqfast train ...",
                       epilog=_preset_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("--stage", help="tokenizer | model (vqddm also: refit); default tokenizer")
    p.add_argument("--data", help="a folder of images (class subfolders give labels), or the bundled 'photos' / "
                                  "'faces' (default photos)")
    p.add_argument("--preset", help="the model preset (see below; default tiny)")
    p.add_argument("--out", help="the run folder (checkpoints, log.jsonl, figures); required unless --resume RUN_DIR")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a constructor argument of the model instead of the preset's (VALUE as JSON, else a "
                        "string), e.g. --override num_classes=13; repeatable")
    p.add_argument("--steps", type=int, help="optimizer steps in all (default 1000)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="save and exit after this step (the schedule still spans --steps; --resume continues)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="save and exit after this many seconds of training (--resume continues)")
    p.add_argument("--batch-size", type=int, help="images per process per micro-batch (default 8)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the paper's)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: the paper's, at most steps/10)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="bf16: autocast with fp32 master weights "
                                                                  "(default fp32)")
    p.add_argument("--clip", type=float, help="max gradient norm (0: no clipping; default 1.0)")
    p.add_argument("--ema", type=float, default=None, help="keep an EMA of the weights with this decay")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue a run (RUN_DIR, or --out) from its latest checkpoint, with the run's settings "
                        "for every option not given (a given one must equal the run's; --steps may grow)")
    p.add_argument("--tokenizer", default=None, help="stage 2: the trained tokenizer (run folder or checkpoint)")
    p.add_argument("--init-from", default=None, help="start from these weights (run folder or checkpoint)")
    p.add_argument("--token-cache", default=None, help="stage 2: train from token shards (python -m vqfast cache)")
    p.add_argument("--eval-every", type=int, help="held-out loss and figures every N steps (default 0: never)")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (default 0: at the end only)")
    p.add_argument("--log-every", type=int, help="a log record every N steps (default 1)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--workers", type=int, default=0, help="data loading processes per rank")
    p.add_argument("--holdout", type=float, help="share of a folder's images held out (default 0.05)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="conv weights and images in NHWC, the layout the fast conv kernels take (default: on "
                        "from 128x128 images, off below, where NCHW is as fast)")
    p.add_argument("--fsdp", action="store_true", default=None,
                   help="shard the model over ranks (torch FSDP) instead of DDP")
    p.add_argument("--device", default=None, help="default: this rank's GPU, else the CPU")
    p.add_argument("--dist-timeout", type=float, default=600.0, help="seconds a rank waits for the others")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("tokenizer losses", "the perceptual and adversarial terms of the papers (stages "
                                                 "tokenizer and refit)")
    g.add_argument("--perceptual-weights", default=None, metavar="PATH",
                   help="a local VGG-16 state dict (torchvision layout, safetensors or .pth; with LPIPS's "
                        "lin<k>.model.1.weight heads for LPIPS) for the perceptual term; PUT: a VGG-19 one for "
                        "its perceptual and style terms (eqs. 6-7). Default: off (the run log says so)")
    g.add_argument("--adversarial", action=argparse.BooleanOptionalAction,
                   help="train against the paper's PatchGAN discriminator, alternating generator and "
                        "discriminator updates (default: on, as every paper)")
    g.add_argument("--disc-start", type=int, default=None, metavar="STEP",
                   help="the step the discriminator starts at (default: the paper's: maskgit / vqddm 250001 "
                        "(taming's ImageNet VQGAN), rq / mqvae / put / vqddm refit 0)")


def parse_overrides(items: list[str]) -> dict:
    """["num_classes=13", "schedule=cosine"] -> {"num_classes": 13, "schedule": "cosine"}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--override must be KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# Options that hold for one invocation only: a resumed run takes every other one from its checkpoint.
_PER_INVOCATION = ("resume", "out", "progress", "workers", "device", "dist_timeout", "stop_after", "time_limit",
                   "init_from")
_DEFAULTS = {"stage": "tokenizer", "data": "photos", "preset": "tiny"}  # TrainConfig's required fields


def train_config(args):
    """The TrainConfig of `train`'s arguments: those given, then (with --resume) the run's, then the defaults."""
    from dataclasses import fields

    from vqfast.train import checkpointing
    from vqfast.train.trainer import TrainConfig

    resume_dir = args.resume if isinstance(args.resume, str) else None
    if resume_dir is not None and args.out is not None and Path(args.out).resolve() != Path(resume_dir).resolve():
        raise ValueError(f"--resume {resume_dir} and --out {args.out} name different run folders: pass one")
    out = resume_dir or args.out
    if out is None:
        raise ValueError("--out RUN_DIR is required (or --resume RUN_DIR to continue a run)")
    names = {f.name for f in fields(TrainConfig)}
    cfg = dict(_DEFAULTS)
    latest = checkpointing.latest(out) if args.resume and Path(out).is_dir() else None
    if latest is not None:
        saved, _ = checkpointing.saved_run(latest)
        if saved.get("family") != args.family:
            raise ValueError(f"--resume: {out} is a {saved.get('family')} run, not {args.family}")
        cfg.update({k: v for k, v in saved.items() if k in names and k not in _PER_INVOCATION})
    cfg.update({k: v for k, v in vars(args).items() if k in names and v is not None and k != "resume"})
    if args.clip is not None:
        cfg["clip"] = args.clip or None
    if args.override:
        cfg["overrides"] = parse_overrides(args.override)
    return TrainConfig(**{**cfg, "out": out, "resume": bool(args.resume), "progress": not args.no_progress})


def run_train(args) -> None:
    from vqfast.train.trainer import train

    out = train(train_config(args))
    if os.environ.get("RANK", "0") == "0":
        print(f"run folder: {out}")


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="metrics of a training run on held-out images (PSNR, SSIM, LPIPS, codebook, "
                                    "FID, IS); torchrun shares the images out over ranks")
    p.add_argument("run_dir", help="a run folder written by python -m vqfast train")
    p.add_argument("--data", default=None, help="the images to evaluate on (default: the run's data, held-out split)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-images", type=int, default=1000, help="held-out images to use at most")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="a local Inception-v3 file (TorchScript inception-2015-12-05.pt, or torch-fidelity's "
                        "weights) for FID, and IS of class-conditional token models' samples")
    p.add_argument("--lpips-weights", default=None, metavar="PATH",
                   help="a local VGG-16 + LPIPS linear-heads file (torchvision vgg16 state dict with "
                        "lin<k>.model.1.weight) for LPIPS of tokenizer reconstructions and PUT's inpaintings")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="decoding steps of MaskGIT / VQ-DDM samples (default: the sampler's)")
    p.add_argument("--device", default=None, help="default: this rank's GPU, else the CPU")
    p.add_argument("--dist-timeout", type=float, default=600.0, help="seconds a rank waits for the others")


def run_eval(args) -> None:
    from vqfast.train.metrics import evaluate_run

    report = evaluate_run(args.run_dir, data=args.data, batch_size=args.batch_size, max_images=args.max_images,
                          inception_weights=args.inception_weights, device=args.device,
                          sample_steps=args.sample_steps, lpips_weights=args.lpips_weights,
                          dist_timeout=args.dist_timeout)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(report, indent=2))


def add_cache_parser(sub) -> None:
    p = sub.add_parser("cache", help="encode a folder once with a trained tokenizer into token shards (stage 2; "
                                     "torchrun shares the images out over ranks)")
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("--tokenizer", required=True, help="the trained tokenizer (run folder or checkpoint)")
    p.add_argument("--data", required=True, help="a folder of images, or 'photos' / 'faces'")
    p.add_argument("--out", required=True, help="the cache folder to write")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-rows", type=int, default=65536, help="images per shard file")
    p.add_argument("--holdout", type=float, default=0.05, help="share of the images held out (as in training)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes per rank")
    p.add_argument("--flips", action="store_true", help="also encode the mirrored crops (twice the rows)")
    p.add_argument("--device", default=None, help="default: this rank's GPU, else the CPU")
    p.add_argument("--dist-timeout", type=float, default=600.0, help="seconds a rank waits for the others")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cache(args) -> None:
    from vqfast.train.cache import write_cache

    out = write_cache(args.family, tokenizer=args.tokenizer, data=args.data, out=args.out,
                      batch_size=args.batch_size, shard_rows=args.shard_rows, holdout=args.holdout,
                      device=args.device, workers=args.workers, flips=args.flips, progress=not args.no_progress,
                      dist_timeout=args.dist_timeout)
    if os.environ.get("RANK", "0") == "0":
        print(f"token cache: {out}")
