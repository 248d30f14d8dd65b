"""Shared fixtures of the trainer tests: a small folder of generated images (two classes, one
grayscale, one RGBA, one 16-bit, one corrupt and one empty file), random-weights VGG files, one
intra-op thread."""
import numpy as np
import pytest
import torch
from PIL import Image

N_GOOD = 14  # readable images in the folder


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: oversubscribed threads make steps 50x slower
    yield
    torch.set_num_threads(threads)


def make_folder(root, n_rgb: int = N_GOOD - 3, seed: int = 0):
    """n_rgb RGB PNGs split over classes cats/ and dogs/ (40x48, smooth colours) plus a grayscale
    JPEG, an RGBA PNG, a 16-bit PNG, a corrupt PNG and an empty file; returns root."""
    rng = np.random.default_rng(seed)
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n_rgb):
        base = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((48, 40), Image.BILINEAR)
        img.save(root / ("cats" if i % 2 else "dogs") / f"img{i:02d}.png")
    Image.fromarray(rng.integers(0, 256, (36, 36)).astype(np.uint8), "L").save(root / "cats" / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4)).astype(np.uint8), "RGBA").save(root / "dogs" / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (40, 44)).astype(np.uint16)).save(root / "dogs" / "deep.png")
    (root / "cats" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return make_folder(tmp_path / "images")


@pytest.fixture
def vgg_weights(tmp_path):
    """write(depth=16, seed=0) -> path of a random-weights torchvision VGG state dict (He-scaled
    convs) with LPIPS linear heads, saved as safetensors."""
    from safetensors.torch import save_file

    from vqfast.models.common.losses import VGGFeatures

    def write(depth: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        state = {}
        for k, v in VGGFeatures(depth).features.state_dict().items():
            std = (2.0 / v[0].numel()) ** 0.5 if v.dim() == 4 else 0.0
            state[f"features.{k}"] = torch.randn(v.shape, generator=g) * std
        for k, c in enumerate((64, 128, 256, 512, 512)):
            state[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=g)
        path = tmp_path / f"vgg{depth}_{seed}.safetensors"
        save_file(state, str(path))
        return str(path)

    return write
