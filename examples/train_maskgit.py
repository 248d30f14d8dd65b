"""Train a MaskGIT (VQGAN tokenizer + bidirectional transformer) on the bundled photos.

    python examples/train_maskgit.py                         # tiny: 32x32 -> 8x8 tokens, minutes on a CPU
    python examples/train_maskgit.py --preset 64px --device cuda \
        --tokenizer-steps 20000 --transformer-steps 100000     # 64x64 -> 16x16 tokens, 24 x 768 (GPU)

--preset names a preset of both models: VQGAN.from_preset and
BidirectionalTransformer.from_preset ("tiny", the demo's sizes, or "64px").

Writes to --out: tokenizer.{safetensors,json}, transformer.{safetensors,json} (vqfast
checkpoints), losses.png (both training curves) and samples.png (inpainting grid on
held-out crops). A stage whose checkpoint already exists in --out is loaded, not
retrained (delete it or pass --retrain).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vqfast import checkpoint
from vqfast.data import CropSampler
from vqfast.demo import inpaint_grid, tokenize, train_tokenizer, train_transformer
from vqfast.models.common.masking import SCHEDULES
from vqfast.models.common.vqgan import VQGAN
from vqfast.models.maskgit import BidirectionalTransformer
from vqfast.visualize import plot_curves, save_grid

PRESETS = ("tiny", "64px")  # in VQGAN.PRESETS and BidirectionalTransformer.PRESETS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="tiny")
    p.add_argument("--source", choices=["photos", "faces"], default="photos")
    p.add_argument("--tokenizer-steps", type=int, default=400)
    p.add_argument("--transformer-steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32, help="batch size of both stages")
    p.add_argument("--pool", type=int, default=4096, help="tokenized training crops for the transformer")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--steps", type=int, default=8, help="decoding steps for the sample grid")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/maskgit")
    p.add_argument("--retrain", action="store_true")
    args = p.parse_args(argv)

    out = Path(args.out)
    res = VQGAN.PRESETS[args.preset]["resolution"]
    train = CropSampler("train", res, source=args.source)
    test = CropSampler("test", res, source=args.source)
    curves: dict[str, list] = {"tokenizer L1": [], "transformer masked CE": []}

    if (out / "tokenizer.json").exists() and not args.retrain:
        vq = checkpoint.load(out / "tokenizer", expected=VQGAN)
    else:
        vq = VQGAN.from_preset(args.preset, seed=args.seed).to(args.device)
        train_tokenizer(vq, _OnDevice(train, args.device), args.tokenizer_steps, batch=args.batch, seed=args.seed,
                        log=curves["tokenizer L1"])
        checkpoint.save(vq, out / "tokenizer", extra={"steps": args.tokenizer_steps, "source": args.source})
    vq = vq.to(args.device).eval()

    L = vq.token_hw[0] * vq.token_hw[1]
    if (out / "transformer.json").exists() and not args.retrain:
        net = checkpoint.load(out / "transformer", expected=BidirectionalTransformer)
    else:
        pool = tokenize(vq, _OnDevice(train, args.device), args.pool, seed=args.seed + 1)
        net = BidirectionalTransformer.from_preset(args.preset, codebook_size=vq.codebook_size, seq_len=L,
                                                   schedule=args.schedule).to(args.device)
        train_transformer(net, pool, args.transformer_steps, batch=args.batch, seed=args.seed,
                          log=curves["transformer masked CE"])
        checkpoint.save(net, out / "transformer", extra={"steps": args.transformer_steps, "schedule": args.schedule})
    net = net.to(args.device).eval()

    plot_curves({name: {name: log} for name, log in curves.items()}, out / "losses.png")
    rows, labels = inpaint_grid(vq.cpu(), net.cpu(), test, steps=args.steps, seed=args.seed)
    save_grid(rows, labels, out / "samples.png")
    print(f"wrote {out / 'losses.png'} and {out / 'samples.png'}; checkpoints in {out}")


class _OnDevice:
    """A CropSampler whose crops land on a device."""

    def __init__(self, sampler: CropSampler, device: str):
        self.sampler, self.device = sampler, device

    def sample(self, n, generator=None, **kw):
        return self.sampler.sample(n, generator, **kw).to(self.device)


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
