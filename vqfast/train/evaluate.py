"""What a run shows at `--eval-every`: the held-out loss, a reconstruction grid (tokenizer
stages) or a sample / inpainting grid (token models) and the loss curves, written to RUN_DIR."""
from __future__ import annotations

from pathlib import Path

import torch

from vqfast.train.data import collate

GRID_IMAGES = 8
SAMPLE_ROWS = 4  # samples drawn per figure (stage 2)


def heldout_batch(data, n: int = GRID_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n held-out images (centre crops, no flips) and labels: the same every call."""
    images, labels, _ = collate([data[(i, None)] for i in range(min(n, len(data)))])
    return images, labels


@torch.no_grad()
def training_figures(stage, model, tokenizer, heldout, run_dir: Path, *, step: int, history: list[dict]) -> dict:
    """Held-out loss of `model` on a fixed batch; writes RUN_DIR/reconstructions.png (tokenizer
    stages) or RUN_DIR/samples.png (token models, default sampler settings) and
    RUN_DIR/losses.png. Returns {"heldout_loss": ...}."""
    from vqfast.visualize import plot_curves, save_grid

    device = next(model.parameters()).device
    images, labels = heldout_batch(heldout)
    images, labels = images.to(device), labels.to(device)
    was_training = model.training
    model.eval()
    try:
        g = torch.Generator().manual_seed(step)
        inputs = stage.encode(tokenizer, images, labels, g)
        record = {"heldout_loss": float(stage.loss(model, inputs, step, tokenizer=tokenizer).total)}
        if stage.name == "model":
            from vqfast.train.stage_metrics import generate
            fake, _, mask = generate(stage, model, tokenizer, images[:SAMPLE_ROWS], labels[:SAMPLE_ROWS], step)
            if mask is not None:  # PUT: inpainting of the held-out images
                shown = images[:SAMPLE_ROWS] * (~mask[:, None])
                save_grid([[m, f, x] for m, f, x in zip(shown, fake, images)],
                          ["masked input", f"completion (step {step})", "held-out"], run_dir / "samples.png")
            else:
                save_grid([[f] for f in fake], [f"samples (step {step})"], run_dir / "samples.png")
        elif stage.family != "put":
            rec = model(images).reconstruction
            save_grid([[x, r] for x, r in zip(images, rec)], ["held-out", f"reconstruction (step {step})"],
                      run_dir / "reconstructions.png")
    finally:
        model.train(was_training)
    curves = {"loss": [(r["step"], r["loss"]) for r in history if "loss" in r]}
    if curves["loss"]:
        plot_curves({"training loss": curves}, run_dir / "losses.png")
    return record
