"""Train PUT end to end: P-VQVAE (stage 1), then the UQ-Transformer (stage 2), then inpaint.

Default: a tiny config on 32x32 CPU crops of the bundled photos (a few minutes). With
--preset ffhq|places2|imagenet: the paper's sizes (Table 1 P-VQVAE, Table 3 transformer,
256x256 images; meant for a GPU). Writes to --out: checkpoints (safetensors + JSON),
loss plots (losses.png) and pluralistic inpainting grids (inpainting.png: masked input,
--samples completions, ground truth per row; reconstructions.png for stage 1).

    python examples/train_put.py --out runs/put_tiny
    python examples/train_put.py --preset ffhq --source faces --device cuda --out runs/put_ffhq
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from vqfast import checkpoint
from vqfast.data import CropSampler, make_masks
from vqfast.models.put import PVQVAE, PVQVAELoss, UQTransformer, put_sample, uq_training_batch
from vqfast.training import optimizer_step, start_run
from vqfast.visualize import plot_curves, save_grid

MASK_KINDS = ("box", "strokes", "half", "outside")


def build(preset: str, device: str):
    """(P-VQVAE, UQ-Transformer, image size): "tiny" for both, or Table 1 + the dataset's Table 3 size."""
    vae = PVQVAE.from_preset("tiny" if preset == "tiny" else "paper").to(device)
    return vae, UQTransformer.from_preset(preset, device=device), vae.resolution


def random_masks(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Missing-pixel masks of mixed kinds (True = missing), one kind per image."""
    kinds = torch.randint(len(MASK_KINDS), (n,), generator=g).tolist()
    return torch.stack([make_masks(MASK_KINDS[k], 1, size, size, generator=g)[0] for k in kinds])


def train_vae(vae, data, args, g, size, log):
    loss_fn = PVQVAELoss(vgg_weights=args.vgg_weights, disc_channels=32 if args.preset == "tiny" else 64,
                         adv_start=args.vae_steps // 2).to(args.device)
    log.append({"stage": "setup", "vgg_terms": loss_fn.vgg_terms})  # eq. 8's perceptual and style terms on/off
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr_vae, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=args.lr_vae, betas=(0.5, 0.9))
    vae.train()
    for step in range(args.vae_steps):
        x = data.sample(args.batch, generator=g).to(args.device)
        m = random_masks(args.batch, size, g).to(args.device)
        # m' (the reference mask of eq. 1): a second, independent mask, off for a quarter of images.
        m2 = random_masks(args.batch, size, g).to(args.device) & (torch.rand(args.batch, 1, 1, generator=g) < 0.75)
        out = vae(x, m, m2, loss_fn=loss_fn, step=step)
        optimizer_step(out.loss.total, opt)
        if step >= loss_fn.adv_start:
            optimizer_step(loss_fn.discriminator_loss(x * ~m[:, None], out.reconstruction).total, opt_d)
        usage = vae.quantizer.statistics(out.tokens)["usage"]
        terms = {"total": float(out.loss.total.detach()), **{k: float(v) for k, v in out.loss.terms.items()}}
        log.append({"stage": "vae", "step": step, "usage": usage, **terms})
        if step % args.log_every == 0 or step == args.vae_steps - 1:
            print(f"vae {step:5d} " + " ".join(f"{k} {v:.4f}" for k, v in terms.items())
                  + f" codebook usage {usage:.3f}", flush=True)


def train_transformer(vae, tf, data, args, g, size, log):
    opt = torch.optim.AdamW(tf.parameters(), lr=args.lr_tf, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, args.tf_steps // 20)
    # Linear warm-up then cosine decay (the official configs: warm-up, cosine annealing).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(
        math.pi * min(1.0, s / max(1, args.tf_steps))))))
    tf.train()
    for step in range(args.tf_steps):
        x = data.sample(args.batch, generator=g).to(args.device)
        m = random_masks(args.batch, size, g).to(args.device)
        loss = tf.loss(uq_training_batch(vae, x, m, random_quantize=0.3, generator=g)).total
        optimizer_step(loss, opt, clip=1.0, scheduler=sched)
        log.append({"stage": "transformer", "step": step, "ce": float(loss.detach())})
        if step % args.log_every == 0 or step == args.tf_steps - 1:
            print(f"transformer {step:5d} ce {float(loss.detach()):.4f}", flush=True)


@torch.no_grad()
def figures(vae, tf, args, size, out: Path):
    test = CropSampler("test", size=size, source=args.source)
    x = test.sample(args.grid_rows, generator=123, flip=False).to(args.device)
    g = torch.Generator().manual_seed(7)
    m = torch.stack([make_masks(MASK_KINDS[i % 3], 1, size, size, generator=g)[0]
                     for i in range(args.grid_rows)]).to(args.device)
    vae.eval()
    rec = vae(x, m).reconstruction
    recon_full = vae(x, None).reconstruction
    save_grid([[x[i] * (~m[i]), rec[i], recon_full[i], x[i]] for i in range(len(x))],
              ["masked input", "P-VQVAE recon.", "recon. (no mask)", "ground truth"], out / "reconstructions.png")
    s = put_sample(vae, tf, x, m, num_samples=args.samples, top_k=args.top_k, generator=args.seed, progress=True)
    rows = [[x[i] * (~m[i])] + [s.images[i, j] for j in range(args.samples)] + [x[i]] for i in range(len(x))]
    save_grid(rows, ["masked input"] + [f"sample {j + 1}" for j in range(args.samples)] + ["ground truth"],
              out / "inpainting.png")
    err = (s.images - x[:, None]).abs().mean().item()
    return {"inpainting_l1_all_pixels": err}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=["tiny", "ffhq", "places2", "imagenet"])
    p.add_argument("--source", default="photos", choices=["photos", "faces"])
    p.add_argument("--out", default="runs/put_tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--tf-steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr-vae", type=float, default=1e-3)
    p.add_argument("--lr-tf", type=float, default=1e-3)
    p.add_argument("--samples", type=int, default=4, help="pluralistic completions per image")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--grid-rows", type=int, default=6)
    p.add_argument("--vae-from", default=None, help="a saved P-VQVAE checkpoint: skip stage 1")
    p.add_argument("--vgg-weights", default=None, help="local VGG-19 weights file (perceptual + style terms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args(argv)
    g, out = start_run(args.out, args.seed, args.threads)
    vae, tf, size = build(args.preset, args.device)
    data = CropSampler("train", size=size, source=args.source)
    log: list[dict] = []
    t0 = time.time()
    if args.vae_from:
        vae = checkpoint.load(args.vae_from, expected=PVQVAE, map_location=args.device)
        vae_log = Path(args.vae_from).parent / "vae_log.json"
        log += json.loads(vae_log.read_text()) if vae_log.exists() else []
    else:
        train_vae(vae, data, args, g, size, log)
        checkpoint.save(vae, out / "pvqvae")
        (out / "vae_log.json").write_text(json.dumps(log))
    vae.eval()
    train_transformer(vae, tf, data, args, g, size, log)
    checkpoint.save(tf, out / "uq_transformer")
    vae_log = [r for r in log if r["stage"] == "vae"]  # empty with --vae-from; adv is 0 before adv_start
    plot_curves({"P-VQVAE (eqs. 1, 3-8; unweighted terms)":
                 {k: [(r["step"], r[k]) for r in vae_log if r[k] > 0] for k in ("pixel", "grad", "commit", "adv", "perc", "style")},
                 "UQ-Transformer cross-entropy (masked tokens)":
                 {"ce": [(r["step"], r["ce"]) for r in log if r["stage"] == "transformer"]}},
                out / "losses.png", smoothing=20)
    metrics = figures(vae, tf, args, size, out)
    metrics.update(minutes=(time.time() - t0) / 60, preset=args.preset)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
