"""Train RQ-VAE (stage 1), then a class-conditional Contextual RQ-Transformer (stage 2), then
generate, inpaint and edit with Draft-and-Revise.

Default: tiny configs on 32x32 CPU crops of the bundled photos (8x8x4 codes, K = 256);
the class of a crop is the photo it comes from (13 classes), so class conditioning,
classifier-free guidance and class-conditional editing (supp. D.3) can be shown. With
--preset 371M|821M|1.4B: RQ-VAE at paper size (256x256 -> 8x8x4, K = 16384) and the
supp. Table 1 transformer with its supp. A.4 decoding settings (meant for a GPU).
Writes to --out: checkpoints (safetensors + JSON), losses.png, reconstructions.png
(coarse to fine: the sum of the first d codes), samples.png (draft and revised samples
per class), inpainting.png and editing.png, metrics.json.

    python examples/train_rq.py --out runs/rq_tiny
    python examples/train_rq.py --preset 371M --device cuda --out runs/rq_371m
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vqfast import checkpoint
from vqfast.data import PHOTOS, ClassCrops, make_masks
from vqfast.models.rq import PAPER_SETTINGS, RQVAE, ContextualRQTransformer, draft_and_revise
from vqfast.training import optimizer_step, start_run
from vqfast.visualize import plot_curves, save_grid


def build(preset: str, device: str):
    n_classes = len(PHOTOS)
    if preset == "tiny":
        rq = RQVAE.from_preset("tiny")
        tf = ContextualRQTransformer.from_preset("tiny", num_classes=n_classes)
    else:
        rq = RQVAE.from_preset("paper")
        tf = ContextualRQTransformer.from_preset(preset, num_classes=n_classes)
    return rq.to(device), tf.to(device), rq.config["resolution"]


def train_rqvae(rq, data, args, g, log):
    opt = torch.optim.Adam(rq.parameters(), lr=args.lr_vae, betas=(0.5, 0.9))
    rq.train()
    for step in range(args.vae_steps):
        x, _ = data.sample(args.batch, g)
        loss, logs = rq(x.to(args.device)).loss
        optimizer_step(loss, opt)
        log.append({"stage": "rqvae", "step": step, **{k: float(v) for k, v in logs.items()}})
        if step % args.log_every == 0 or step == args.vae_steps - 1:
            stats = rq.quantizer.statistics(rq.encode(x.to(args.device)))
            print(f"rqvae {step:5d} rec {logs['rec']:.4f} commit {logs['commit']:.4f} "
                  f"usage {stats['usage']:.2f} perplexity {stats['perplexity']:.1f}", flush=True)


@torch.no_grad()
def encode_pool(rq, data, n, args, g):
    rq.eval()
    codes, labels = [], []
    for i in range(0, n, 256):
        x, y = data.sample(min(256, n - i), g)
        codes.append(rq.encode(x.to(args.device)))
        labels.append(y.to(args.device))
    return torch.cat(codes), torch.cat(labels)


def train_transformer(tf, codes, labels, args, g, log):
    opt = torch.optim.AdamW(tf.parameters(), lr=args.lr_tf, betas=(0.9, 0.95), weight_decay=1e-4)  # supp. A.3
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / args.tf_steps)))
    tf.train()
    for step in range(args.tf_steps):
        pick = torch.randint(len(codes), (args.batch,), generator=g).to(codes.device)
        loss = tf.loss(codes[pick], class_labels=labels[pick], generator=g).total
        optimizer_step(loss, opt, clip=1.0, scheduler=sched)
        log.append({"stage": "transformer", "step": step, "nll": float(loss.detach())})
        if step % args.log_every == 0 or step == args.tf_steps - 1:
            print(f"transformer {step:5d} nll {float(loss.detach()):.4f}", flush=True)


def decode_partial(rq, codes, d):
    """Image from the sum of the first d codes of every stack."""
    z = sum(F.embedding(codes[..., i], rq.quantizer.level(i).codes()) for i in range(d))
    return rq.decode(z.permute(0, 3, 1, 2))


@torch.no_grad()
def figures(rq, tf, args, size, out: Path):
    rq.eval(), tf.eval()
    dec = dict(T_draft=args.t_draft, T_revise=args.t_revise, M=args.m, revise_temperature=0.8,
               revise_guidance=args.guidance)
    test = ClassCrops("test", size)
    labels = test.spread_labels(args.grid_rows)
    rows, g = len(labels), torch.Generator().manual_seed(123)
    x = test.sample(rows, g, labels)[0].to(args.device)
    codes = rq.encode(x)
    D = rq.code_depth
    recs = [decode_partial(rq, codes, d) for d in range(1, D + 1)]
    save_grid([[x[i]] + [r[i] for r in recs] for i in range(rows)],
              ["input"] + [f"sum of {d} code{'s' * (d > 1)}" for d in range(1, D + 1)], out / "reconstructions.png")
    # class-conditional samples: draft and revised images side by side
    n = args.samples
    y = labels.to(args.device).repeat_interleave(n)
    final, hist = draft_and_revise(tf, batch_size=len(y), class_labels=y, generator=args.seed, progress=True,
                                   return_history=True, **dec)
    draft = [s for s in hist if s.phase == "draft"][-1].codes
    img_d, img_r = rq.decode_tokens(draft).view(rows, n, 3, size, size), rq.decode_tokens(final).view(rows, n, 3, size, size)
    grid = [[im for j in range(n) for im in (img_d[i, j], img_r[i, j])] + [x[i]] for i in range(rows)]
    save_grid(grid, [t for j in range(n) for t in (f"draft {j + 1}", f"revised {j + 1}")] + ["real (test)"],
              out / "samples.png", row_labels=[PHOTOS[int(c)] for c in labels])
    # inpainting (true class) and editing (another class), supp. D.3
    mg = torch.Generator().manual_seed(7)
    kinds = ("box", "outside", "half")
    m = torch.stack([make_masks(kinds[i % 3], 1, *tf.grid, generator=mg)[0] for i in range(rows)]).to(args.device)
    pix = F.interpolate(m[:, None].float(), size=(size, size), mode="nearest")[:, 0].bool()
    masked_in = torch.where(pix[:, None], torch.zeros_like(x), x)
    fills = [rq.decode_tokens(draft_and_revise(tf, codes, m, class_labels=labels.to(args.device),
                                              generator=args.seed + k, **dec).tokens) for k in range(n)]
    save_grid([[masked_in[i]] + [f[i] for f in fills] + [x[i]] for i in range(rows)],
              ["masked input"] + [f"completion {k + 1}" for k in range(n)] + ["ground truth"], out / "inpainting.png",
              row_labels=[PHOTOS[int(c)] for c in labels])
    box = torch.zeros_like(m)
    h, w = tf.grid
    box[:, h // 4: h - h // 4, w // 4: w - w // 4] = True
    pixb = F.interpolate(box[:, None].float(), size=(size, size), mode="nearest")[:, 0].bool()
    others = [(labels + k) % len(PHOTOS) for k in range(0, 3 * (len(PHOTOS) // 3), len(PHOTOS) // 3)]
    edits = [rq.decode_tokens(draft_and_revise(tf, codes, box, class_labels=c.to(args.device), generator=args.seed,
                                              **dec).tokens) for c in others]
    save_grid([[torch.where(pixb[i, None], torch.zeros_like(x[i]), x[i])] + [e[i] for e in edits]
               for i in range(rows)], ["centre masked"] + ["own class", "edit: class +4", "edit: class +8"],
              out / "editing.png", row_labels=[PHOTOS[int(c)] for c in labels])
    keep = (~pix)[:, None].expand_as(x)
    return {"inpainting_kept_pixels_l1": float((fills[0] - x).abs()[keep].mean()),
            "rqvae_l1": float((recs[-1] - x).abs().mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=["tiny", "371M", "821M", "1.4B"])
    p.add_argument("--out", default="runs/rq_tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rqvae", default=None, help="a trained RQ-VAE checkpoint: skip stage 1")
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--tf-steps", type=int, default=2000)
    p.add_argument("--pool", type=int, default=4096, help="crops encoded once for transformer training")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr-vae", type=float, default=1e-3)
    p.add_argument("--lr-tf", type=float, default=1e-3, help="paper: 1e-4 with cosine decay (supp. A.3)")
    p.add_argument("--t-draft", type=int, default=None, help="default: 8 (tiny) or 64 (paper presets)")
    p.add_argument("--t-revise", type=int, default=None)
    p.add_argument("--m", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None, help="revise-phase guidance (default 2.0 tiny, supp. A.4)")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--grid-rows", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args(argv)
    paper = PAPER_SETTINGS.get(args.preset, dict(T_draft=8, T_revise=2, M=2, revise_guidance=2.0))
    args.t_draft = args.t_draft or paper["T_draft"]
    args.t_revise = args.t_revise or paper["T_revise"]
    args.m = paper["M"] if args.m is None else args.m
    args.guidance = paper["revise_guidance"] if args.guidance is None else args.guidance
    g, out = start_run(args.out, args.seed, args.threads)
    rq, tf, size = build(args.preset, args.device)
    data = ClassCrops("train", size)
    log: list[dict] = []
    t0 = time.time()
    if args.rqvae:  # stage 1 done before: reuse that tokenizer
        rq = checkpoint.load(args.rqvae, expected=RQVAE).to(args.device)
    else:
        train_rqvae(rq, data, args, g, log)
        checkpoint.save(rq, out / "rqvae")
    codes, labels = encode_pool(rq, data, args.pool, args, g)
    train_transformer(tf, codes, labels, args, g, log)
    checkpoint.save(tf, out / "rq_transformer")
    vae_log = [r for r in log if r["stage"] == "rqvae"]  # empty with --rqvae
    plot_curves({"RQ-VAE (MSE, partial-sum commitment)": {k: [(r["step"], r[k]) for r in vae_log] for k in ("rec", "commit")},
                 "Contextual RQ-Transformer NLL (masked positions, all depths)":
                 {"nll": [(r["step"], r["nll"]) for r in log if r["stage"] == "transformer"]}},
                out / "losses.png", smoothing=25)
    metrics = figures(rq, tf, args, size, out)
    metrics.update(minutes=(time.time() - t0) / 60, preset=args.preset,
                   decoding=dict(T_draft=args.t_draft, T_revise=args.t_revise, M=args.m, guidance=args.guidance))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
