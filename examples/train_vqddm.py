"""Train VQ-DDM end to end on the bundled photos: tokenizer, ReFiT, discrete diffusion, sampling.

    python examples/train_vqddm.py --threads 1                 # tiny: 32x32 crops -> 16x16 tokens, CPU
    python examples/train_vqddm.py --config paper --device cuda --tokenizer-steps 50000 \
        --ddm-steps 1000000 --batch 180                           # the appendix's 117M U-Net, K = 1024

Stages (a stage whose checkpoint exists in --out is loaded, unless --retrain):
1. VQGAN tokenizer (vqfast.models.common.conv) on crops -> 16x16 token maps.
2. ReFiT (Sec. 3.2): P = 20k encoder features, AFK-MC2 (m = 200) + k-means rebuild the
   codebook (optionally to a smaller K), usage before/after on held-out crops; then the
   decoder is fine-tuned with the encoder frozen.
3. VQDDM (eq. 23 denoiser) on the token maps with the VLB in bits/dim and importance-
   sampled t (T = 4000).
4. Samples: full T-step chain and strided chains; inpainting of held-out crops.

Writes to --out: tokenizer / vqddm checkpoints (safetensors + JSON), losses.png (tokenizer
L1, ReFiT fine-tune L1, diffusion bits/dim), samples.png, inpainting.png, report.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vqfast import checkpoint
from vqfast.data import MASK_KINDS, CropSampler, make_masks, pixel_to_token_mask, token_to_pixel_mask
from vqfast.random import as_generator
from vqfast.demo import tokenize, train_tokenizer
from vqfast.models.common.vqgan import VQGAN
from vqfast.models.vqddm import VQDDM, ImportanceSampler, finetune_decoder, refit_tokenizer, vqddm_sample
from vqfast.training import optimizer_step
from vqfast.visualize import plot_curves, save_grid

CONFIGS = {
    # 32x32 crops, one halving -> 16x16 tokens, 128 codes (ReFiT keeps 128); tiny U-Net. No dead-code
    # revival in the tokenizer: like the paper's straight-through VQGAN it leaves codes unused for ReFiT to fix.
    "tiny": dict(tokenizer=dict(resolution=32, ch=16, ch_mult=[1, 2], num_res_blocks=1, codebook_size=128,
                                embed_dim=16, threshold_dead_code=None),
                 refit_K=128, ddm="tiny"),
    # the paper: 256x256 -> 16x16 tokens, K = 1024 (ReFiT to 512 optional), the 117M U-Net
    "paper": dict(tokenizer=dict(resolution=256, ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
                                 codebook_size=1024, embed_dim=256),
                  refit_K=1024, ddm="paper"),
}


def train_ddm(model: VQDDM, tokens: torch.Tensor, steps: int, *, batch: int, lr: float, seed: int,
              log: list) -> ImportanceSampler:
    """Adam (lr, cosine annealing) on the VLB in bits/dim with importance-sampled t."""
    g = as_generator(seed)
    sampler = ImportanceSampler(model.T)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    from tqdm.auto import tqdm

    model.train()
    bar = tqdm(range(steps), desc="vqddm", mininterval=2.0)
    for step in bar:
        x0 = tokens[torch.randint(len(tokens), (batch,), generator=g)].to(next(model.parameters()).device)
        loss = model.loss(x0, generator=g, sampler=sampler)  # records this batch's L_t in the sampler
        optimizer_step(loss.total, opt, clip=1.0, scheduler=lr_sched)
        log.append((step, float(loss.terms["bpd"])))
        bar.set_postfix(bpd=f"{log[-1][1]:.3f}")
    model.eval()
    return sampler


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
def inpaint_grid(vq: VQGAN, model: VQDDM, data: CropSampler, *, steps: int | None, n_samples: int, seed: int):
    kinds = list(MASK_KINDS)
    x = data.sample(len(kinds), seed)
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--source", choices=["photos", "faces"], default="photos")
    p.add_argument("--tokenizer-steps", type=int, default=400)
    p.add_argument("--finetune-steps", type=int, default=100, help="decoder fine-tune after ReFiT")
    p.add_argument("--refit-P", type=int, default=20000)
    p.add_argument("--ddm-steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="diffusion model lr (paper: 1e-4 at batch 180)")
    p.add_argument("--T", type=int, default=4000)
    p.add_argument("--pool", type=int, default=4096, help="tokenized training crops for the diffusion model")
    p.add_argument("--sample-strides", default="25,100,full", help="comma list of step counts ('full' = T)")
    p.add_argument("--inpaint-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/vqddm")
    p.add_argument("--retrain", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    out, cfg = Path(args.out), CONFIGS[args.config]
    R = cfg["tokenizer"]["resolution"]
    train, test = CropSampler("train", R, source=args.source), CropSampler("test", R, source=args.source)
    curves: dict[str, list] = {"tokenizer L1": [], "ReFiT decoder fine-tune L1": [], "VQ-DDM VLB (bits/dim)": []}
    report: dict = {"config": args.config}

    if (out / "tokenizer.json").exists() and not args.retrain:
        vq = checkpoint.load(out / "tokenizer", expected=VQGAN).to(args.device)
        extra = checkpoint.read_config(out / "tokenizer")["extra"]
        report["refit"] = extra.get("refit")
        curves.update({k: [tuple(v) for v in log] for k, log in extra.get("curves", {}).items()})
    else:
        vq = VQGAN(**cfg["tokenizer"], seed=args.seed).to(args.device)
        train_tokenizer(vq, train, args.tokenizer_steps, batch=args.batch, seed=args.seed, log=curves["tokenizer L1"])
        images, heldout = train.sample(2048, args.seed + 1), test.sample(512, args.seed + 2)
        t0 = time.perf_counter()
        rep = refit_tokenizer(vq, images.to(args.device), P=args.refit_P, K=cfg["refit_K"],
                              heldout=heldout.to(args.device), chain_length=200,
                              generator=torch.Generator().manual_seed(args.seed))
        report["refit"] = {"usage_before": rep.usage_before, "usage_after": rep.usage_after,
                           "kmeans_iters": len(rep.kmeans.inertia) - 1,
                           "seconds": time.perf_counter() - t0, "P": args.refit_P, "K": cfg["refit_K"]}
        print(f"ReFiT: codebook usage {rep.usage_before:.1%} -> {rep.usage_after:.1%} on held-out crops")
        finetune_decoder(vq, train, args.finetune_steps, batch_size=args.batch, lr=1e-4, generator=args.seed,
                         log=curves["ReFiT decoder fine-tune L1"], progress=True)
        checkpoint.save(vq, out / "tokenizer", extra={"steps": args.tokenizer_steps, "refit": report["refit"],
                                                      "curves": {k: curves[k] for k in list(curves)[:2]}})

    if (out / "vqddm.json").exists() and not args.retrain:
        model = checkpoint.load(out / "vqddm", expected=VQDDM).to(args.device)
    else:
        tokens = tokenize(vq, train, args.pool, seed=args.seed + 3)
        h, w = vq.token_hw
        model = VQDDM.from_preset(cfg["ddm"], codebook_size=vq.codebook_size, size=h, T=args.T).to(args.device)
        print(f"VQDDM: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
              f"{len(tokens)} token maps {h}x{w}, K={vq.codebook_size}, T={args.T}")
        t0 = time.perf_counter()
        train_ddm(model, tokens.view(-1, h, w), args.ddm_steps, batch=args.batch, lr=args.lr,
                  seed=args.seed, log=curves["VQ-DDM VLB (bits/dim)"])
        report["ddm_train_seconds"] = time.perf_counter() - t0
        bpd = [v for _, v in curves["VQ-DDM VLB (bits/dim)"]] or [float("nan")]
        report["bpd_first_50"], report["bpd_last_50"] = sum(bpd[:50]) / len(bpd[:50]), sum(bpd[-50:]) / len(bpd[-50:])
        checkpoint.save(model, out / "vqddm", extra={"steps": args.ddm_steps, "bpd_last_50": report["bpd_last_50"]})
        # the importance-weighted VLB estimate is noisy: draw its running mean too
        plot_curves({name: {name: log} for name, log in curves.items()}, out / "losses.png", smoothing=50)

    strides = [None if s == "full" else int(s) for s in args.sample_strides.split(",")]
    rows, labels = sample_grid(vq.cpu(), model.cpu(), 6, strides, args.seed)
    save_grid([list(col) for col in zip(*rows)], labels, out / "samples.png")
    rows, labels = inpaint_grid(vq, model, test, steps=args.inpaint_steps, n_samples=3, seed=args.seed)
    save_grid(rows, labels, out / "inpainting.png")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {out}/losses.png, samples.png, inpainting.png, report.json")


if __name__ == "__main__":
    main()
