import torch
from PIL import Image

from vqfast.visualize import plot_curves, save_grid, smooth, to_image


def test_to_image_maps_minus_one_one_to_unit_range():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 5).expand(3, 1, 5)
    img = to_image(x)
    assert img.shape == (1, 5, 3)
    assert img[0, :, 0].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_smooth_is_running_mean_then_window():
    assert smooth([2.0, 4.0, 6.0], k=10) == [2.0, 3.0, 4.0]
    out = smooth([0.0] * 5 + [10.0] * 50, k=2)
    assert abs(out[-1] - 10.0) < 1e-6


def test_save_grid_and_plot_curves_write_pngs(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = [[torch.rand(3, 8, 8, generator=g) * 2 - 1 for _ in range(3)] for _ in range(2)]
    save_grid(rows, ["a", "b", "c"], tmp_path / "sub" / "grid.png", row_labels=["r1", "r2"])
    with Image.open(tmp_path / "sub" / "grid.png") as im:
        assert im.width > im.height > 0  # 3 columns, 2 rows
    plot_curves({"loss": {"train": [(0, 1.0), (1, 0.5)], "test": []}, "ce": {"ce": [(0, -1.0), (5, 2.0)]}},
                tmp_path / "curves.png", smoothing=3)
    with Image.open(tmp_path / "curves.png") as im:
        assert im.width > im.height > 0
