"""Train VQ-DDM end to end with the library trainer: tokenizer, ReFiT, discrete diffusion, sampling.

    python examples/train_vqddm.py --threads 1                 # tiny: 32x32 crops -> 16x16 tokens, CPU
    python examples/train_vqddm.py --config paper --device cuda --data path/to/images \
        --tokenizer-steps 50000 --ddm-steps 1000000 --batch 180   # taming's f16 VQGAN (K = 1024), the 117M U-Net

Stages (each a run folder in --out, loaded when already trained with the same settings,
unless --retrain):
1. tokenizer/: the VQGAN tokenizer on --data ("photos" by default) -> 16x16 token maps.
2. refit/ (Sec. 3.2): P = 20k encoder features, AFK-MC2 (m = 200) + k-means rebuild the
   codebook; then the decoder is fine-tuned with the encoder frozen. Codebook usage on
   held-out images before and after is reported.
3. vqddm/: VQDDM (eq. 23 denoiser) on the token maps with the VLB in bits/dim (T = 4000).
4. Samples: full T-step chain and strided chains; inpainting of held-out images.

Writes to --out: the three run folders (checkpoints, log.jsonl, run.json), losses.png
(tokenizer L1, ReFiT fine-tune L1, diffusion bits/dim), samples.png, inpainting.png,
report.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vqfast.data import MASK_KINDS, make_masks, pixel_to_token_mask, token_to_pixel_mask
from vqfast.models.common.vqgan import VQGAN
from vqfast.models.vqddm import VQDDM, vqddm_sample
from vqfast.train import TrainConfig, load_model, train_or_load
from vqfast.train.data import open_images
from vqfast.train.evaluate import heldout_batch
from vqfast.train.log import read_log
from vqfast.train.metrics import codebook_stats
from vqfast.visualize import plot_curves, save_grid

CONFIGS = {
    # 32x32 crops, one halving -> 16x16 tokens, 128 codes; tiny U-Net. No dead-code revival in the
    # tokenizer: like the paper's straight-through VQGAN it leaves codes unused for ReFiT to fix.
    "tiny": dict(preset="tiny", overrides=dict(ch_mult=[1, 2], codebook_size=128, embed_dim=16,
                                               threshold_dead_code=None), ddm="tiny"),
    # the paper: 256x256 -> 16x16 tokens, K = 1024 (taming's f16 VQGAN), the 117M U-Net
    "paper": dict(preset="taming-f16-1024", overrides={}, ddm="paper"),
}


@torch.no_grad()
def sample_grid(vq: VQGAN, model: VQDDM, n: int, strides: list[int | None], seed: int):
    rows, labels = [], []
    for steps in strides:
        t0 = time.perf_counter()
        z = vqddm_sample(model, batch_size=n, steps=steps, generator=seed, progress=True).tokens
        secs = time.perf_counter() - t0
        rows.append(list(vq.decode_tokens(z)))
        labels.append(f"{steps or model.T} steps ({secs:.0f} s)")
    return rows, labels


@torch.no_grad()
def inpaint_grid(vq: VQGAN, model: VQDDM, x: torch.Tensor, *, steps: int | None, n_samples: int, seed: int):
    """Held-out images x [len(MASK_KINDS), 3, R, R], one per mask kind: masked input,
    n_samples completions, VQ reconstruction, truth."""
    kinds = list(MASK_KINDS)[: len(x)]
    R = vq.config["resolution"]
    pix = torch.cat([make_masks(k, 1, R, R, seed + i) for i, k in enumerate(kinds)])
    tok_mask = pixel_to_token_mask(pix, vq.token_hw)
    pix = token_to_pixel_mask(tok_mask, (R, R))
    tokens = vq.encode(x)
    rep = lambda t: t.repeat_interleave(n_samples, 0)  # noqa: E731 -- every image n_samples times
    z = vqddm_sample(model, steps=steps, known=rep(tokens), mask=rep(tok_mask), generator=seed, progress=True).tokens
    imgs = vq.decode_tokens(z).view(len(x), n_samples, 3, R, R)
    masked_in = torch.where(pix[:, None], torch.full_like(x, 0.6), x)
    rows = [[masked_in[i], *imgs[i], vq.decode_tokens(tokens[i:i + 1])[0], x[i]] for i in range(len(x))]
    return rows, ["masked input", *[f"sample {j + 1}" for j in range(n_samples)], "VQ recon", "ground truth"]


@torch.no_grad()
def usage(vq: VQGAN, x: torch.Tensor) -> float:
    """Share of vq's codes used by the tokens of images x."""
    return codebook_stats(vq.encode(x), vq.codebook_size)["codebook_usage"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--data", default="photos", help="'photos', 'faces' or a folder of images")
    p.add_argument("--tokenizer-steps", type=int, default=400)
    p.add_argument("--finetune-steps", type=int, default=100, help="decoder fine-tune after ReFiT")
    p.add_argument("--ddm-steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr-tokenizer", type=float, default=2e-3, help="(VQGAN paper: 1e-4 over 100k+ steps)")
    p.add_argument("--lr", type=float, default=1e-3, help="diffusion model lr (paper: 1e-4 at batch 180)")
    p.add_argument("--T", type=int, default=4000)
    p.add_argument("--sample-strides", default="25,100,full", help="comma list of step counts ('full' = T)")
    p.add_argument("--inpaint-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", default=None, help="default: the GPU when there is one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/vqddm")
    p.add_argument("--retrain", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    out, cfg = Path(args.out), CONFIGS[args.config]
    common = dict(data=args.data, batch_size=args.batch, seed=args.seed, device=args.device)
    tok_run, trained = train_or_load(TrainConfig("vqddm", "tokenizer", preset=cfg["preset"], out=str(out / "tokenizer"),
                                                 steps=args.tokenizer_steps, lr=args.lr_tokenizer,
                                                 overrides=cfg["overrides"], **common), retrain=args.retrain)
    refit_run, trained = train_or_load(TrainConfig("vqddm", "refit", preset=cfg["preset"], out=str(out / "refit"),
                                                   tokenizer=str(tok_run), steps=args.finetune_steps, **common),
                                       retrain=args.retrain or trained)
    t0 = time.perf_counter()
    ddm_run, ddm_trained = train_or_load(TrainConfig("vqddm", "model", preset=cfg["ddm"], out=str(out / "vqddm"),
                                           tokenizer=str(refit_run), steps=args.ddm_steps, lr=args.lr,
                                           overrides={"T": args.T}, **common), retrain=args.retrain or trained)
    vq, model = load_model(refit_run), load_model(ddm_run)  # the figures run on the CPU

    R = vq.config["resolution"]
    test = open_images(args.data, R, split="test")
    heldout = heldout_batch(test, 512)[0]
    logs = {name: read_log(run) for name, run in (("tok", tok_run), ("refit", refit_run), ("ddm", ddm_run))}
    bpd = [r["bpd"] for r in logs["ddm"]]
    report = {"config": args.config,
              "refit": {"usage_before": usage(load_model(tok_run), heldout), "usage_after": usage(vq, heldout)},
              **({"ddm_train_seconds": time.perf_counter() - t0} if ddm_trained else {}),
              "bpd_first_50": sum(bpd[:50]) / len(bpd[:50]), "bpd_last_50": sum(bpd[-50:]) / len(bpd[-50:])}
    print(f"ReFiT: codebook usage {report['refit']['usage_before']:.1%} -> {report['refit']['usage_after']:.1%} "
          f"on held-out images")
    # the one-t VLB estimate is noisy: draw its running mean too
    plot_curves({"tokenizer L1": {"rec": [(r["step"], r["rec"]) for r in logs["tok"]]},
                 "ReFiT decoder fine-tune L1": {"rec": [(r["step"], r["rec"]) for r in logs["refit"]]},
                 "VQ-DDM VLB (bits/dim)": {"bpd": [(r["step"], r["bpd"]) for r in logs["ddm"]]}},
                out / "losses.png", smoothing=50)

    strides = [None if s == "full" else int(s) for s in args.sample_strides.split(",")]
    rows, labels = sample_grid(vq, model, 6, strides, args.seed)
    save_grid([list(col) for col in zip(*rows)], labels, out / "samples.png")
    rows, labels = inpaint_grid(vq, model, heldout[: len(MASK_KINDS)], steps=args.inpaint_steps, n_samples=3,
                                seed=args.seed)
    save_grid(rows, labels, out / "inpainting.png")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {out}/losses.png, samples.png, inpainting.png, report.json")


if __name__ == "__main__":
    main()
