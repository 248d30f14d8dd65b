"""Train MQ-VAE (stage 1), then a class-conditional Stackformer (stage 2), then sample.

Default: tiny configs on 32x32 CPU crops of the bundled photos (8x8 grid, half of the
positions kept: 32 (code, position) pairs per image, K = 256); the class of a crop is the
photo it comes from (13 classes; --unconditional drops them). With --preset
f8|f8_r30|f16 the MQ-VAE is the paper's (256x256 crops, K = 1024) and --stackformer picks
a Stackformer preset (meant for a GPU). --tf-steps 0 stops after stage 1.
Writes to --out: mqvae / stackformer checkpoints (safetensors + JSON), losses.png,
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
import math
import time
from pathlib import Path

import torch

from vqfast import checkpoint
from vqfast.data import PHOTOS, ClassCrops
from vqfast.models.common.losses import HingeGAN, PatchDiscriminator, VGGPerceptual
from vqfast.models.mqvae import MQVAE, Stackformer, stackformer_sample
from vqfast.models.mqvae.mask import select_top
from vqfast.training import optimizer_step, start_run
from vqfast.visualize import plot_curves, save_grid


def train_mqvae(vq: MQVAE, data: ClassCrops, args, g: torch.Generator, log: list) -> None:
    """Adam (0.5, 0.9) as supp. Sec. 1; linear warm-up then constant."""
    opt = torch.optim.Adam(vq.parameters(), lr=args.lr_vae, betas=(0.5, 0.9))
    warm = max(1, args.vae_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    perceptual = VGGPerceptual.from_file(args.perceptual).to(args.device) if args.perceptual else None
    adversarial, opt_d = None, None
    if args.adversarial > 0:
        adversarial = HingeGAN(PatchDiscriminator(channels=32 if args.preset.startswith("tiny") else 64),
                               weight=args.adversarial).to(args.device)
        opt_d = torch.optim.Adam(adversarial.parameters(), lr=args.lr_vae, betas=(0.5, 0.9))
    vq.train()
    for step in range(args.vae_steps):
        x, _ = data.sample(args.batch, g)
        x = x.to(args.device)
        gan_on = adversarial is not None and step >= args.vae_steps // 2  # taming's delayed discriminator
        rec, _, loss = vq(x, perceptual=perceptual, adversarial=adversarial if gan_on else None)
        optimizer_step(loss.total, opt, scheduler=sched)
        if gan_on:
            optimizer_step(adversarial.discriminator_loss(x, rec), opt_d)
        log.append({"stage": "mqvae", "step": step, "total": float(loss.total.detach()),
                    **{k: float(v) for k, v in loss.terms.items()}})
        if step % args.log_every == 0 or step == args.vae_steps - 1:
            with torch.no_grad():
                vq.eval()
                stats = vq.quantizer.statistics(vq.encode(x)[0])
                vq.train()
            print(f"mqvae {step:5d} rec {log[-1]['rec']:.4f} commit {log[-1]['commit']:.4f} "
                  f"usage {stats['usage']:.2f} perplexity {stats['perplexity']:.1f}", flush=True)


@torch.no_grad()
def encode_pool(vq: MQVAE, data: ClassCrops, n: int, args, g: torch.Generator):
    """n training crops -> (codes [n, k], positions [n, k] raster order, labels [n])."""
    vq.eval()
    codes, positions, labels = [], [], []
    for i in range(0, n, 256):
        x, y = data.sample(min(256, n - i), g)
        c, p, _ = vq.encode(x.to(args.device))
        codes.append(c), positions.append(p), labels.append(y.to(args.device))
    return torch.cat(codes), torch.cat(positions), torch.cat(labels)


def train_stackformer(tf: Stackformer, codes, positions, labels, args, g: torch.Generator, log: list) -> None:
    """AdamW (0.9, 0.95), weight decay 0.01, cosine decay (supp. Sec. 1); loss = CE(code) + CE(position)."""
    opt = torch.optim.AdamW(tf.parameters(), lr=args.lr_tf, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / args.tf_steps)))
    tf.train()
    for step in range(args.tf_steps):
        pick = torch.randint(len(codes), (args.batch,), generator=g).to(codes.device)
        loss = tf.loss(codes[pick], positions[pick], class_labels=labels[pick] if tf.num_classes else None,
                       generator=g)
        optimizer_step(loss.total, opt, clip=1.0, scheduler=sched)
        log.append({"stage": "stackformer", "step": step, "total": float(loss.total.detach()),
                    **{k: float(v) for k, v in loss.terms.items()}})
        if step % args.log_every == 0 or step == args.tf_steps - 1:
            r = log[-1]
            print(f"stackformer {step:5d} code {r['code']:.4f} position {r['position']:.4f}", flush=True)


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
    test = ClassCrops("test", size)
    labels = test.spread_labels(args.grid_rows)
    rows, g = len(labels), torch.Generator().manual_seed(123)
    x = test.sample(rows, g, labels)[0].to(args.device)
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
    save_grid(grid, titles, out / "reconstructions.png", row_labels=[PHOTOS[int(c)] for c in labels])
    # held-out MSE over a larger batch: learned vs random mask at the same k
    xb, _ = test.sample(args.eval_crops, g)
    xb = xb.to(args.device)
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
    vq.eval(), tf.eval()
    test = ClassCrops("test", vq.resolution)
    labels = test.spread_labels(args.grid_rows)
    rows, n = len(labels), args.samples
    real, _ = test.sample(rows, torch.Generator().manual_seed(321), labels)
    real = real.to(args.device)
    y = labels.to(args.device).repeat_interleave(n) if tf.num_classes else None
    t0 = time.time()
    codes, positions = stackformer_sample(tf, batch_size=rows * n, num_tokens=vq.num_kept, class_labels=y,
                                          generator=args.seed, progress=True)
    seconds = time.time() - t0
    imgs = vq.decode_tokens(codes, positions)
    shown = faded(imgs, positions, vq.grid_size)
    grid = [[im for j in range(n) for im in (imgs[i * n + j], shown[i * n + j])] + [real[i]] for i in range(rows)]
    titles = [t for j in range(n) for t in (f"sample {j + 1}", "its positions")] + ["real (test)"]
    row_labels = [PHOTOS[int(c)] for c in labels] if tf.num_classes else None
    save_grid(grid, titles, out / "samples.png", row_labels=row_labels)
    # continuations: keep the first m (code, position) pairs of a real sequence, sample the rest
    c, p, _ = vq.encode(real)
    m = vq.num_kept // 2
    conts = [stackformer_sample(tf, batch_size=rows, num_tokens=vq.num_kept,
                                class_labels=labels.to(args.device) if tf.num_classes else None,
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
    p.add_argument("--out", default="runs/mqvae_tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mqvae", default=None, help="a trained MQ-VAE checkpoint: skip stage 1")
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--stackformer", default="tiny", choices=sorted(Stackformer.PRESETS),
                   help="Stackformer preset (K, grid, length and classes are set from the MQ-VAE and the data)")
    p.add_argument("--unconditional", action="store_true", help="unconditional Stackformer (default: photo classes)")
    p.add_argument("--tf-steps", type=int, default=1500, help="0: stage 1 only")
    p.add_argument("--steps", type=int, default=None, help="override both step counts (smoke runs)")
    p.add_argument("--pool", type=int, default=4096, help="crops encoded once for Stackformer training")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-crops", type=int, default=256, help="held-out crops for the learned-vs-random mask MSE")
    p.add_argument("--lr-vae", type=float, default=1e-3, help="paper: 4.5e-6 x batch (taming's base rate)")
    p.add_argument("--lr-tf", type=float, default=1e-3)
    p.add_argument("--perceptual", default=None, help="VGG16/LPIPS weights file (safetensors) for the perceptual loss")
    p.add_argument("--adversarial", type=float, default=0.0, help="hinge GAN weight (paper 0.75), 0: off")
    p.add_argument("--samples", type=int, default=4, help="Stackformer samples per class row")
    p.add_argument("--grid-rows", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args(argv)
    if args.steps is not None:
        args.vae_steps = args.tf_steps = args.steps
    g, out = start_run(args.out, args.seed, args.threads)
    log: list[dict] = []
    t0 = time.time()
    if args.mqvae:  # stage 1 done before: reuse that tokenizer
        vq = checkpoint.load(args.mqvae, expected=MQVAE).to(args.device)
    else:
        overrides = {} if args.ratio is None else {"ratio": args.ratio}
        vq = MQVAE.from_preset(args.preset, seed=args.seed, **overrides).to(args.device)
        train_mqvae(vq, ClassCrops("train", vq.resolution), args, g, log)
        checkpoint.save(vq, out / "mqvae", extra={"steps": args.vae_steps, "preset": args.preset})
    metrics = {"preset": args.preset, "stage1_minutes": (time.time() - t0) / 60,
               **reconstruction_figures(vq, args, out)}
    if args.tf_steps > 0:
        tf = Stackformer.from_preset(args.stackformer, codebook_size=vq.codebook_size,
                                     num_positions=vq.num_positions, max_len=vq.num_kept,
                                     num_classes=0 if args.unconditional else len(PHOTOS)).to(args.device)
        codes, positions, labels = encode_pool(vq, ClassCrops("train", vq.resolution), args.pool, args, g)
        train_stackformer(tf, codes, positions, labels, args, g, log)
        checkpoint.save(tf, out / "stackformer", extra={"steps": args.tf_steps, "preset": args.stackformer})
        metrics.update(stackformer=args.stackformer, stackformer_code_ce=log[-1]["code"],
                       stackformer_position_ce=log[-1]["position"], **sample_figures(vq, tf, args, out))
    vae_log = [r for r in log if r["stage"] == "mqvae"]  # empty with --mqvae
    tf_log = [r for r in log if r["stage"] == "stackformer"]
    panels = {}
    if vae_log:
        panels["MQ-VAE (L2 reconstruction, commitment)"] = {k: [(r["step"], r[k]) for r in vae_log]
                                                            for k in ("rec", "commit")}
    if tf_log:
        panels["Stackformer (cross-entropy)"] = {k: [(r["step"], r[k]) for r in tf_log] for k in ("code", "position")}
    if panels:
        plot_curves(panels, out / "losses.png", smoothing=25)
    metrics["minutes"] = (time.time() - t0) / 60
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
