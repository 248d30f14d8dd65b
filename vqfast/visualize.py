"""PNG image grids and training-curve plots for the demo and the examples (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path

import torch

Curve = list[tuple[int, float]]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def to_image(x: torch.Tensor):
    """[3, H, W] in [-1, 1] -> numpy [H, W, 3] in [0, 1]."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def save_grid(rows: list[list[torch.Tensor]], titles: list[str], path: str | Path,
              row_labels: list[str] | None = None, scale: int = 4) -> None:
    """rows of images [3, H, W] in [-1, 1] -> one PNG; titles label the columns, row_labels the rows."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * 1.05, n_rows * 1.05 + 0.3), squeeze=False)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            ax = axes[r][c]
            ax.imshow(to_image(img), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=7)
        if row_labels:
            axes[r][0].set_ylabel(row_labels[r], fontsize=7)
    fig.subplots_adjust(wspace=0.04, hspace=0.04, left=0.1 if row_labels else 0.01, right=0.99, bottom=0.01,
                        top=1 - 0.3 / (n_rows + 0.3))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=25 * scale)
    plt.close(fig)


def smooth(values: list[float], k: int) -> list[float]:
    """Running mean over the last ~k values (exact mean while fewer than k have been seen)."""
    out, acc = [], 0.0
    for i, y in enumerate(values):
        acc = y if i == 0 else acc + (y - acc) / min(i + 1, k)
        out.append(acc)
    return out


def plot_curves(panels: dict[str, dict[str, Curve]], path: str | Path, *, smoothing: int = 1,
                log_y: bool = True) -> None:
    """One panel per title, one line per label; each curve is [(step, value), ...].

    smoothing > 1 draws the raw curve faintly and its running mean over `smoothing` points on top."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.5), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        drawn = False
        for label, curve in curves.items():
            if not curve:
                continue
            steps, values = zip(*curve)
            if smoothing > 1:
                line, = ax.plot(steps, values, lw=0.5, alpha=0.35)
                ax.plot(steps, smooth(list(values), smoothing), lw=1.3, color=line.get_color(), label=label)
            else:
                ax.plot(steps, values, lw=0.9, label=label)
            drawn = True
        ax.set_title(title, fontsize=9), ax.set_xlabel("step")
        if drawn:
            if log_y and all(v > 0 for c in curves.values() for _, v in c):
                ax.set_yscale("log")
            if len(curves) > 1:
                ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
