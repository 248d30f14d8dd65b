"""Train RQ-VAE (stage 1), then a class-conditional Contextual RQ-Transformer (stage 2) with
the library trainer, then generate, inpaint and edit with Draft-and-Revise.

Default: tiny configs on 32x32 crops of the bundled photos (8x8x4 codes, K = 256);
the class of a crop is the photo it comes from (13 classes), so class conditioning,
classifier-free guidance and class-conditional editing (supp. D.3) can be shown (a --data
folder's class subfolders are its classes; without classes there is no editing.png). With
--preset 371M|821M|1.4B: RQ-VAE at paper size (256x256 -> 8x8x4, K = 16384) and the
supp. Table 1 transformer with its supp. A.4 decoding settings (meant for a GPU).
Writes to --out: rqvae/ and rq_transformer/ (run folders: checkpoints, log.jsonl, run.json),
losses.png, reconstructions.png
(coarse to fine: the sum of the first d codes), samples.png (draft and revised samples
per class), inpainting.png and editing.png, metrics.json.

    python examples/train_rq.py --out runs/rq_tiny
    python examples/train_rq.py --preset 371M --device cuda --out runs/rq_371m
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vqfast.data import make_masks
from vqfast.models.rq import PAPER_SETTINGS, draft_and_revise
from vqfast.train import TrainConfig, load_model, train_or_load
from vqfast.train.data import open_images
from vqfast.train.evaluate import heldout_batch
from vqfast.train.log import read_log
from vqfast.visualize import plot_curves, save_grid


def decode_partial(rq, codes, d):
    """Image from the sum of the first d codes of every stack."""
    z = sum(F.embedding(codes[..., i], rq.quantizer.level(i).codes()) for i in range(d))
    return rq.decode(z.permute(0, 3, 1, 2))


@torch.no_grad()
def figures(rq, tf, args, size, out: Path):
    rq.eval(), tf.eval()
    dec = dict(T_draft=args.t_draft, T_revise=args.t_revise, M=args.m, revise_temperature=0.8,
               revise_guidance=args.guidance)
    test = open_images(args.data, size, split="test")
    x, labels = (t.to(args.device) for t in heldout_batch(test, args.grid_rows))
    rows, classes = len(x), tf.num_classes
    names = [test.classes[int(c)] for c in labels] if test.classes else None
    y_rows = labels if classes else None
    codes = rq.encode(x)
    D = rq.code_depth
    recs = [decode_partial(rq, codes, d) for d in range(1, D + 1)]
    save_grid([[x[i]] + [r[i] for r in recs] for i in range(rows)],
              ["input"] + [f"sum of {d} code{'s' * (d > 1)}" for d in range(1, D + 1)], out / "reconstructions.png")
    # class-conditional samples: draft and revised images side by side
    n = args.samples
    y = labels.repeat_interleave(n) if classes else None
    final, hist = draft_and_revise(tf, batch_size=rows * n, class_labels=y, generator=args.seed, progress=True,
                                   return_history=True, **dec)
    draft = [s for s in hist if s.phase == "draft"][-1].codes
    img_d, img_r = rq.decode_tokens(draft).view(rows, n, 3, size, size), rq.decode_tokens(final).view(rows, n, 3, size, size)
    grid = [[im for j in range(n) for im in (img_d[i, j], img_r[i, j])] + [x[i]] for i in range(rows)]
    save_grid(grid, [t for j in range(n) for t in (f"draft {j + 1}", f"revised {j + 1}")] + ["real (test)"],
              out / "samples.png", row_labels=names)
    # inpainting (true class) and editing (another class), supp. D.3
    mg = torch.Generator().manual_seed(7)
    kinds = ("box", "outside", "half")
    m = torch.stack([make_masks(kinds[i % 3], 1, *tf.grid, generator=mg)[0] for i in range(rows)]).to(args.device)
    pix = F.interpolate(m[:, None].float(), size=(size, size), mode="nearest")[:, 0].bool()
    masked_in = torch.where(pix[:, None], torch.zeros_like(x), x)
    fills = [rq.decode_tokens(draft_and_revise(tf, codes, m, class_labels=y_rows,
                                              generator=args.seed + k, **dec).tokens) for k in range(n)]
    save_grid([[masked_in[i]] + [f[i] for f in fills] + [x[i]] for i in range(rows)],
              ["masked input"] + [f"completion {k + 1}" for k in range(n)] + ["ground truth"], out / "inpainting.png",
              row_labels=names)
    keep = (~pix)[:, None].expand_as(x)
    metrics = {"inpainting_kept_pixels_l1": float((fills[0] - x).abs()[keep].mean()),
               "rqvae_l1": float((recs[-1] - x).abs().mean())}
    if classes:
        edit(rq, tf, x, codes, labels, dec, args, out, names)
    return metrics


def edit(rq, tf, x, codes, labels, dec, args, out: Path, names) -> None:
    """editing.png: the centre of each held-out image resampled for its own class and two others (supp. D.3)."""
    size, classes, rows = x.shape[-1], tf.num_classes, len(x)
    box = torch.zeros(rows, *tf.grid, dtype=torch.bool, device=x.device)
    h, w = tf.grid
    box[:, h // 4: h - h // 4, w // 4: w - w // 4] = True
    pixb = F.interpolate(box[:, None].float(), size=(size, size), mode="nearest")[:, 0].bool()
    shift = max(1, classes // 3)
    edits = [rq.decode_tokens(draft_and_revise(tf, codes, box, class_labels=(labels + k * shift) % classes,
                                              generator=args.seed, **dec).tokens) for k in range(3)]
    save_grid([[torch.where(pixb[i, None], torch.zeros_like(x[i]), x[i])] + [e[i] for e in edits]
               for i in range(rows)],
              ["centre masked", "own class", f"edit: class +{shift}", f"edit: class +{2 * shift}"],
              out / "editing.png", row_labels=names)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=["tiny", "371M", "821M", "1.4B"])
    p.add_argument("--data", default="photos", help="'photos', 'faces' or a folder of images")
    p.add_argument("--out", default="runs/rq_tiny")
    p.add_argument("--device", default=None, help="default: the GPU when there is one")
    p.add_argument("--rqvae", default=None, help="a trained RQ-VAE (run folder or checkpoint): skip stage 1")
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--tf-steps", type=int, default=2000)
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
    p.add_argument("--retrain", action="store_true", help="train stages already trained in --out again")
    args = p.parse_args(argv)
    paper = PAPER_SETTINGS.get(args.preset, dict(T_draft=8, T_revise=2, M=2, revise_guidance=2.0))
    args.t_draft = args.t_draft or paper["T_draft"]
    args.t_revise = args.t_revise or paper["T_revise"]
    args.m = paper["M"] if args.m is None else args.m
    args.guidance = paper["revise_guidance"] if args.guidance is None else args.guidance
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out, t0 = Path(args.out), time.time()
    common = dict(data=args.data, batch_size=args.batch, seed=args.seed, device=args.device)
    rq_run, trained = args.rqvae, False
    if rq_run is None:
        preset = "tiny" if args.preset == "tiny" else "paper"
        rq_run, trained = train_or_load(TrainConfig("rq", "tokenizer", preset=preset,
                                                    out=str(out / "rqvae"), steps=args.vae_steps, lr=args.lr_vae,
                                                    **common), retrain=args.retrain)
    # the supp. Table 1 transformer, conditioned on the data's classes (13 photos by default)
    classes = open_images(args.data, 32, split="test").num_classes
    tf_run, _ = train_or_load(TrainConfig("rq", "model", preset=args.preset, out=str(out / "rq_transformer"),
                                          tokenizer=str(rq_run), steps=args.tf_steps, lr=args.lr_tf,
                                          overrides={"num_classes": classes}, **common),
                              retrain=args.retrain or trained)
    rq, tf = load_model(rq_run, args.device), load_model(tf_run, args.device)
    panels = {"Contextual RQ-Transformer NLL (masked positions, all depths)":
              {"nll": [(r["step"], r["loss"]) for r in read_log(tf_run)]}}
    if args.rqvae is None:
        panels = {"RQ-VAE (MSE, partial-sum commitment)": {k: [(r["step"], r[k]) for r in read_log(rq_run)]
                                                           for k in ("rec", "commit")}, **panels}
    plot_curves(panels, out / "losses.png", smoothing=25)
    metrics = figures(rq, tf, args, rq.config["resolution"], out)
    metrics.update(minutes=(time.time() - t0) / 60, preset=args.preset,
                   decoding=dict(T_draft=args.t_draft, T_revise=args.t_revise, M=args.m, guidance=args.guidance))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
