"""Real photos bundled inside installed packages (nothing is downloaded).

Sources: scikit-image 0.26 (`skimage.data`), scikit-learn (`load_sample_image`) and
matplotlib (`get_sample_data`). Every image comes back as a float32 tensor
[3, H, W] in [0, 1]; grayscale textures are repeated over the three channels.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
                  "immunohistochemistry", "brick", "grass", "gravel")
SKLEARN_PHOTOS = ("china", "flower")
MATPLOTLIB_PHOTOS = ("grace_hopper",)
PHOTOS = SKIMAGE_PHOTOS + SKLEARN_PHOTOS + MATPLOTLIB_PHOTOS
N_FACES = 100


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(a, copy=True))
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.dim() == 2:
        t = t.unsqueeze(-1).expand(-1, -1, 3)
    return t[..., :3].permute(2, 0, 1).contiguous().clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=None)
def _load_raw(name: str) -> np.ndarray:
    if name in SKIMAGE_PHOTOS:
        from skimage import data
        return getattr(data, name)()
    if name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image
        return load_sample_image(f"{name}.jpg")
    if name in MATPLOTLIB_PHOTOS:
        import matplotlib.cbook
        import matplotlib.image
        with matplotlib.cbook.get_sample_data(f"{name}.jpg") as f:
            return matplotlib.image.imread(f, format="jpg")
    raise ValueError(f"photo must be one of {PHOTOS}, got {name!r}")


def load_photo(name: str, short_side: int | None = None) -> torch.Tensor:
    """One bundled photo as float32 [3, H, W] in [0, 1], optionally resized (antialiased)
    so that min(H, W) == short_side.

        img = load_photo("astronaut", short_side=96)   # [3, 96, 96]
    """
    img = _to_tensor(_load_raw(name))
    if short_side is not None:
        if not isinstance(short_side, int) or short_side < 1:
            raise ValueError(f"short_side must be a positive int, got {short_side!r}")
        h, w = img.shape[1:]
        s = short_side / min(h, w)
        size = (max(short_side, round(h * s)), max(short_side, round(w * s)))
        img = F.interpolate(img[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        img = img.clamp_(0.0, 1.0)
    return img


def load_faces() -> torch.Tensor:
    """The 100 faces of scikit-image's `lfw_subset`, float32 [100, 3, 25, 25] in [0, 1]
    (grayscale repeated over 3 channels); a tiny stand-in for a face data set.
    (`lfw_subset` holds 200 images: the first 100 are faces, the rest LFW backgrounds.)"""
    from skimage import data
    faces = torch.from_numpy(data.lfw_subset()[:N_FACES]).float().clamp_(0.0, 1.0)
    return faces[:, None].expand(-1, 3, -1, -1).contiguous()
