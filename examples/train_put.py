"""Train PUT end to end with the library trainer: P-VQVAE (stage 1), then the UQ-Transformer
(stage 2), then inpaint held-out images.

Default: tiny configs on 32x32 crops of the bundled photos (a few minutes on a CPU). With
--preset ffhq|places2|imagenet: the paper's sizes (Table 1 P-VQVAE, Table 3 transformer,
256x256 images; meant for a GPU and a --data folder). Writes to --out: pvqvae/ and
uq_transformer/ (run folders: checkpoints, log.jsonl, run.json), losses.png,
reconstructions.png (stage 1) and inpainting.png (masked input, --samples pluralistic
completions, ground truth per row), metrics.json.

    python examples/train_put.py --out runs/put_tiny
    python examples/train_put.py --preset ffhq --data faces --device cuda --out runs/put_ffhq
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vqfast.data import make_masks
from vqfast.models.put import put_sample
from vqfast.train import TrainConfig, load_model, train_or_load
from vqfast.train.data import open_images
from vqfast.train.evaluate import heldout_batch
from vqfast.train.log import read_log
from vqfast.visualize import plot_curves, save_grid

MASK_KINDS = ("box", "strokes", "half")


@torch.no_grad()
def figures(vae, tf, args, out: Path) -> dict:
    """reconstructions.png and inpainting.png on held-out images; the inpainting L1."""
    size = vae.resolution
    x, _ = heldout_batch(open_images(args.data, size, split="test"), args.grid_rows)
    x = x.to(next(vae.parameters()).device)
    g = torch.Generator().manual_seed(7)
    m = torch.stack([make_masks(MASK_KINDS[i % 3], 1, size, size, generator=g)[0]
                     for i in range(len(x))]).to(x.device)
    rec = vae(x, m).reconstruction
    recon_full = vae(x, None).reconstruction
    save_grid([[x[i] * (~m[i]), rec[i], recon_full[i], x[i]] for i in range(len(x))],
              ["masked input", "P-VQVAE recon.", "recon. (no mask)", "ground truth"], out / "reconstructions.png")
    s = put_sample(vae, tf, x, m, num_samples=args.samples, top_k=args.top_k, generator=args.seed, progress=True)
    rows = [[x[i] * (~m[i])] + [s.images[i, j] for j in range(args.samples)] + [x[i]] for i in range(len(x))]
    save_grid(rows, ["masked input"] + [f"sample {j + 1}" for j in range(args.samples)] + ["ground truth"],
              out / "inpainting.png")
    return {"inpainting_l1_all_pixels": (s.images - x[:, None]).abs().mean().item()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=["tiny", "ffhq", "places2", "imagenet"])
    p.add_argument("--data", default="photos", help="'photos', 'faces' or a folder of images")
    p.add_argument("--out", default="runs/put_tiny")
    p.add_argument("--device", default=None, help="default: the GPU when there is one")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--tf-steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr-vae", type=float, default=1e-3)
    p.add_argument("--lr-tf", type=float, default=1e-3)
    p.add_argument("--samples", type=int, default=4, help="pluralistic completions per image")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--grid-rows", type=int, default=6)
    p.add_argument("--vae-from", default=None, help="a trained P-VQVAE (run folder or checkpoint): skip stage 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--retrain", action="store_true", help="train stages already trained in --out again")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    out, t0 = Path(args.out), time.time()
    common = dict(data=args.data, batch_size=args.batch, seed=args.seed, device=args.device)
    trained = False
    vae_run = args.vae_from
    if vae_run is None:
        preset = "tiny" if args.preset == "tiny" else "paper"  # Table 1
        vae_run, trained = train_or_load(TrainConfig("put", "tokenizer", preset=preset,
                                                     out=str(out / "pvqvae"), steps=args.vae_steps, lr=args.lr_vae,
                                                     **common), retrain=args.retrain)
    tf_run, _ = train_or_load(TrainConfig("put", "model", preset=args.preset, out=str(out / "uq_transformer"),
                                          tokenizer=str(vae_run), steps=args.tf_steps, lr=args.lr_tf, **common),
                              retrain=args.retrain or trained)
    vae, tf = load_model(vae_run, device), load_model(tf_run, device)
    ce = [(r["step"], r["loss"]) for r in read_log(tf_run)]
    panels = {"UQ-Transformer cross-entropy (masked tokens)": {"ce": ce}}
    if args.vae_from is None:  # eq. 1's terms, unweighted
        log = read_log(vae_run)
        panels = {"P-VQVAE (eqs. 1, 3-8; unweighted terms)":
                  {k: [(r["step"], r[k]) for r in log if r.get(k, 0) > 0] for k in ("pixel", "grad", "commit")},
                  **panels}
    plot_curves(panels, out / "losses.png", smoothing=20)
    metrics = figures(vae, tf, args, out)
    metrics.update(minutes=(time.time() - t0) / 60, preset=args.preset)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
