"""Train MQ-VAE (stage 1), then a class-conditional Stackformer (stage 2) with the library
trainer, then sample.

Default: tiny configs on 32x32 crops of the bundled photos (8x8 grid, half of the
positions kept: 32 (code, position) pairs per image, K = 256); the class of a crop is the
photo it comes from (13 classes; --unconditional drops them; a --data folder's class
subfolders are its classes). With --preset f8|f8_r30|f16 the MQ-VAE is the paper's
(256x256 crops, K = 1024) and --stackformer picks a Stackformer preset (meant for a GPU).
--tf-steps 0 stops after stage 1.
Writes to --out: mqvae/ and stackformer/ (run folders: checkpoints, log.jsonl, run.json), losses.png,
importance.png (input | score heat map | kept regions | reconstruction, supp. Figs. 5-7),
reconstructions.png (held-out crops: the learned top-k mask vs a random mask with the
same k, and the learned mask at k/2 and 2k), samples.png (Stackformer samples per class
with their sampled positions), continuation.png (the first half of a held-out crop's
raster sequence kept, the rest sampled), metrics.json.

    python examples/train_mqvae.py --out runs/mqvae_tiny
    python examples/train_mqvae.py --preset f16 --stackformer 307M --device cuda --out runs/mqvae_f16
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vqfast.models.mqvae import MQVAE, Stackformer, stackformer_sample
from vqfast.models.mqvae.mask import select_top
from vqfast.train import TrainConfig, load_model, train_or_load
from vqfast.train.data import open_images
from vqfast.train.evaluate import heldout_batch
from vqfast.train.log import read_log
from vqfast.visualize import plot_curves, save_grid


def heldout(args, size: int, n: int):
    """(n held-out images [n, 3, size, size], their labels [n], row labels or None)."""
    test = open_images(args.data, size, split="test")
    x, labels = heldout_batch(test, n)
    names = [test.classes[int(c)] for c in labels] if test.classes else None
    return x.to(args.device), labels.to(args.device), names


def faded(x: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """images [B, 3, R, R] with the regions of positions [B, k] kept and the rest faded to grey."""
    B, _, R, _ = x.shape
    keep = torch.zeros(B, grid[0] * grid[1], device=x.device).scatter_(1, positions, 1.0).view(B, 1, *grid)
    keep = torch.nn.functional.interpolate(keep, size=(R, R), mode="nearest")
    return x * (0.2 + 0.8 * keep)


@torch.no_grad()
def reconstruction_figures(vq: MQVAE, args, out: Path) -> dict:
    """importance.png and reconstructions.png on held-out crops; test MSE of the learned mask
    vs a random mask with the same number of kept positions."""
    vq.eval()
    size, k, n_pos = vq.resolution, vq.num_kept, vq.num_positions
    x, _, names = heldout(args, size, args.grid_rows)
    rows, g = len(x), torch.Generator().manual_seed(123)
    vq.importance_map_png(x, out / "importance.png")
    codes, positions, scores = vq.encode(x)
    rand = torch.stack([torch.randperm(n_pos, generator=g)[:k] for _ in range(rows)]).to(args.device)
    variants = {f"learned top {k}": (codes, positions), f"random {k}": vq.encode(x, positions=rand)[:2]}
    flat = scores.flatten(1)
    for kk in sorted({max(1, k // 2), min(n_pos, 2 * k)} - {k}):
        variants[f"learned top {kk}"] = vq.encode(x, positions=select_top(flat, kk))[:2]
    recs = {name: vq.decode_tokens(c, p) for name, (c, p) in variants.items()}
    names = list(recs)
    grid = [[x[i]] + [im for name in names for im in (faded(x[i:i + 1], variants[name][1][i:i + 1],
                                                              vq.grid_size)[0], recs[name][i])]
            for i in range(rows)]
    titles = ["input"] + [t for name in names for t in (f"kept: {name}", "reconstruction")]
    save_grid(grid, titles, out / "reconstructions.png", row_labels=names)
    # held-out MSE over a larger batch: learned vs random mask at the same k
    xb, _, _ = heldout(args, size, args.eval_crops)
    c, p, _ = vq.encode(xb)
    rb = torch.stack([torch.randperm(n_pos, generator=g)[:k] for _ in range(len(xb))]).to(args.device)
    mse_learned = float((vq.decode_tokens(c, p) - xb).pow(2).mean())
    mse_random = float((vq.decode_tokens(*vq.encode(xb, positions=rb)[:2]) - xb).pow(2).mean())
    stats = vq.quantizer.statistics(c)
    return {"test_mse_learned_mask": mse_learned, "test_mse_random_mask": mse_random,
            "random_over_learned": mse_random / mse_learned, "codebook_usage": stats["usage"],
            "codebook_perplexity": stats["perplexity"], "kept": k, "positions": n_pos}

@torch.no_grad()
def sample_figures(vq: MQVAE, tf: Stackformer, args, out: Path) -> dict:
    """samples.png (per class, or unconditional rows) and continuation.png (the first half of a
    held-out crop's raster sequence kept, the rest sampled)."""
    real, labels, names = heldout(args, vq.resolution, args.grid_rows)
    rows, n = len(real), args.samples
    y = labels.repeat_interleave(n) if tf.num_classes else None
    t0 = time.time()
    codes, positions = stackformer_sample(tf, batch_size=rows * n, num_tokens=vq.num_kept, class_labels=y,
                                          generator=args.seed, progress=True)
    seconds = time.time() - t0
    imgs = vq.decode_tokens(codes, positions)
    shown = faded(imgs, positions, vq.grid_size)
    grid = [[im for j in range(n) for im in (imgs[i * n + j], shown[i * n + j])] + [real[i]] for i in range(rows)]
    titles = [t for j in range(n) for t in (f"sample {j + 1}", "its positions")] + ["real (test)"]
    row_labels = names if tf.num_classes else None
    save_grid(grid, titles, out / "samples.png", row_labels=row_labels)
    # continuations: keep the first m (code, position) pairs of a real sequence, sample the rest
    c, p, _ = vq.encode(real)
    m = vq.num_kept // 2
    conts = [stackformer_sample(tf, batch_size=rows, num_tokens=vq.num_kept,
                                class_labels=labels if tf.num_classes else None,
                                generator=args.seed + 1 + k, prefix_codes=c[:, :m], prefix_positions=p[:, :m])
             for k in range(n)]
    grid = [[real[i], faded(real[i:i + 1], p[i:i + 1, :m], vq.grid_size)[0]]
            + [vq.decode_tokens(cc[i:i + 1], pp[i:i + 1])[0] for cc, pp in conts] for i in range(rows)]
    save_grid(grid, ["real (test)", f"first {m} pairs kept"] + [f"continuation {k + 1}" for k in range(n)],
              out / "continuation.png", row_labels=row_labels)
    return {"sample_seconds": seconds, "sampled_tokens_per_second": rows * n * vq.num_kept / seconds}



def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(MQVAE.PRESETS), help="MQ-VAE preset")
    p.add_argument("--ratio", type=float, default=None, help="kept share of positions (paper mask ratio = 1 - ratio)")
    p.add_argument("--data", default="photos", help="'photos', 'faces' or a folder of images")
    p.add_argument("--out", default="runs/mqvae_tiny")
    p.add_argument("--device", default=None, help="default: the GPU when there is one")
    p.add_argument("--mqvae", default=None, help="a trained MQ-VAE (run folder or checkpoint): skip stage 1")
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--stackformer", default="tiny", choices=sorted(Stackformer.PRESETS),
                   help="Stackformer preset (K, grid and length are set from the MQ-VAE, classes from the data)")
    p.add_argument("--unconditional", action="store_true",
                   help="unconditional Stackformer (default: the data's classes)")
    p.add_argument("--tf-steps", type=int, default=1500, help="0: stage 1 only")
    p.add_argument("--steps", type=int, default=None, help="override both step counts (smoke runs)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-crops", type=int, default=256, help="held-out images for the learned-vs-random mask MSE")
    p.add_argument("--lr-vae", type=float, default=1e-3, help="paper: 4.5e-6 x batch (taming's base rate)")
    p.add_argument("--lr-tf", type=float, default=1e-3)
    p.add_argument("--samples", type=int, default=4, help="Stackformer samples per class row")
    p.add_argument("--grid-rows", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--retrain", action="store_true", help="train stages already trained in --out again")
    args = p.parse_args(argv)
    if args.steps is not None:
        args.vae_steps = args.tf_steps = args.steps
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out, t0 = Path(args.out), time.time()
    common = dict(data=args.data, batch_size=args.batch, seed=args.seed, device=args.device)
    vq_run, trained = args.mqvae, False
    if vq_run is None:
        vq_run, trained = train_or_load(TrainConfig("mqvae", "tokenizer", preset=args.preset, out=str(out / "mqvae"),
                                                    steps=args.vae_steps, lr=args.lr_vae,
                                                    overrides={} if args.ratio is None else {"ratio": args.ratio},
                                                    **common), retrain=args.retrain)
    vq = load_model(vq_run, args.device)
    metrics = {"preset": args.preset, "stage1_minutes": (time.time() - t0) / 60,
               **reconstruction_figures(vq, args, out)}
    panels = {}
    if args.mqvae is None:
        panels["MQ-VAE (L2 reconstruction, commitment)"] = {k: [(r["step"], r[k]) for r in read_log(vq_run)]
                                                            for k in ("rec", "commit")}
    if args.tf_steps > 0:
        classes = 0 if args.unconditional else open_images(args.data, vq.resolution, split="test").num_classes
        tf_run, _ = train_or_load(TrainConfig("mqvae", "model", preset=args.stackformer, out=str(out / "stackformer"),
                                              tokenizer=str(vq_run), steps=args.tf_steps, lr=args.lr_tf,
                                              overrides={"num_classes": classes}, **common),
                                  retrain=args.retrain or trained)
        tf = load_model(tf_run, args.device)
        log = read_log(tf_run)
        panels["Stackformer (cross-entropy)"] = {k: [(r["step"], r[k]) for r in log] for k in ("code", "position")}
        metrics.update(stackformer=args.stackformer, stackformer_code_ce=log[-1]["code"],
                       stackformer_position_ce=log[-1]["position"], **sample_figures(vq, tf, args, out))
    if panels:
        plot_curves(panels, out / "losses.png", smoothing=25)
    metrics["minutes"] = (time.time() - t0) / 60
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
