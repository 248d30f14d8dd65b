"""Train a MaskGIT (VQGAN tokenizer, then the bidirectional transformer) with the library
trainer, then inpaint held-out images.

    python examples/train_maskgit.py                         # tiny: 32x32 -> 8x8 tokens, minutes on a CPU
    python examples/train_maskgit.py --preset 64px --device cuda --data path/to/images \
        --tokenizer-steps 20000 --transformer-steps 100000     # 64x64 -> 16x16 tokens, 24 x 768 (GPU)

--preset names a preset of both models: VQGAN and BidirectionalTransformer ("tiny", the
demo's sizes, or "64px"). --data: the bundled "photos" (default) or "faces", or a folder
of images (class subfolders give labels).

Writes to --out: tokenizer/ and transformer/ (run folders of `python -m vqfast train`:
checkpoints, log.jsonl, run.json), losses.png (both training curves) and samples.png
(inpainting grid on held-out images). A stage already trained in --out with the same
settings is loaded, not retrained (--retrain trains it again).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vqfast.data import MASK_KINDS
from vqfast.demo import inpaint_grid
from vqfast.models.common.masking import SCHEDULES
from vqfast.train import TrainConfig, load_model, train_or_load
from vqfast.train.data import open_images
from vqfast.train.evaluate import heldout_batch
from vqfast.train.log import read_log
from vqfast.visualize import plot_curves, save_grid

PRESETS = ("tiny", "64px")  # in VQGAN.PRESETS and BidirectionalTransformer.PRESETS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="tiny")
    p.add_argument("--data", default="photos", help="'photos', 'faces' or a folder of images")
    p.add_argument("--tokenizer-steps", type=int, default=400)
    p.add_argument("--transformer-steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32, help="batch size of both stages")
    p.add_argument("--lr-tokenizer", type=float, default=2e-3, help="the demo's (VQGAN paper: 1e-4 over 100k+ steps)")
    p.add_argument("--lr-transformer", type=float, default=1e-3, help="the demo's (MaskGIT paper: 1e-4)")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="the mask ratio schedule gamma")
    p.add_argument("--steps", type=int, default=8, help="decoding steps for the sample grid")
    p.add_argument("--device", default=None, help="default: the GPU when there is one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/maskgit")
    p.add_argument("--retrain", action="store_true")
    args = p.parse_args(argv)

    out = Path(args.out)
    common = dict(data=args.data, preset=args.preset, batch_size=args.batch, seed=args.seed, device=args.device)
    tok_run, trained = train_or_load(TrainConfig("maskgit", "tokenizer", out=str(out / "tokenizer"),
                                                 steps=args.tokenizer_steps, lr=args.lr_tokenizer, **common),
                                     retrain=args.retrain)
    net_run, _ = train_or_load(TrainConfig("maskgit", "model", out=str(out / "transformer"), tokenizer=str(tok_run),
                                           steps=args.transformer_steps, lr=args.lr_transformer,
                                           overrides={"schedule": args.schedule}, **common),
                               retrain=args.retrain or trained)
    vq, net = load_model(tok_run), load_model(net_run)  # the figures run on the CPU

    plot_curves({"tokenizer L1": {"rec": [(r["step"], r["rec"]) for r in read_log(tok_run)]},
                 "transformer masked CE": {"ce": [(r["step"], r["loss"]) for r in read_log(net_run)]}},
                out / "losses.png")
    test = open_images(args.data, vq.config["resolution"], split="test")
    x = heldout_batch(test, 2 * len(MASK_KINDS))[0]
    rows, labels = inpaint_grid(vq, net, x[: len(x) // len(MASK_KINDS) * len(MASK_KINDS)], steps=args.steps,
                                seed=args.seed)
    save_grid(rows, labels, out / "samples.png")
    print(f"wrote {out / 'losses.png'} and {out / 'samples.png'}; runs in {tok_run} and {net_run}")


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
