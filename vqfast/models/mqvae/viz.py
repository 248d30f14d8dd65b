"""MQ-VAE importance maps as a PNG (supp. Figs. 5-7): per image, the input, its score heat
map over the image (red = high, blue = low), the kept regions (masked ones greyed out)
and the reconstruction (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from vqfast.visualize import to_image


def save_importance_maps(images: torch.Tensor, scores: torch.Tensor, positions: torch.Tensor,
                         recon: torch.Tensor, path, alpha: float = 0.55) -> Path:
    """images, recon [B, 3, R, R] in [-1, 1]; scores [B, h, w]; positions [B, k] kept -> PNG at path.

    Scores are min-max normalized per image for display (the official code does it per batch)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B, _, R, _ = images.shape
    h, w = scores.shape[1:]
    s = scores.detach().float().cpu().flatten(1)
    lo, hi = s.min(1, keepdim=True).values, s.max(1, keepdim=True).values
    s = (s - lo) / (hi - lo).clamp_min(1e-6)
    heat = F.interpolate(s.view(B, 1, h, w), size=(R, R), mode="nearest")[:, 0]
    kept = torch.zeros(B, h * w).scatter_(1, positions.cpu(), 1.0).view(B, 1, h, w)
    kept = F.interpolate(kept, size=(R, R), mode="nearest")[:, 0].bool()
    cmap = plt.get_cmap("jet")
    titles = ("input", "importance", f"kept {positions.shape[1]}/{h * w}", "reconstruction")
    fig, axes = plt.subplots(B, 4, figsize=(4 * 1.1, B * 1.1 + 0.3), squeeze=False)
    for b in range(B):
        img = to_image(images[b])
        masked = img.copy()
        masked[~kept[b].numpy()] = 0.5 + 0.2 * (masked[~kept[b].numpy()] - 0.5)  # faded grey
        overlay = (1 - alpha) * img + alpha * cmap(heat[b].numpy())[..., :3]
        for c, panel in enumerate((img, overlay, masked, to_image(recon[b]))):
            ax = axes[b][c]
            ax.imshow(panel.clip(0, 1), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if b == 0:
                ax.set_title(titles[c], fontsize=7)
    fig.subplots_adjust(wspace=0.04, hspace=0.04, left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / (B * 1.1 + 0.3))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
