"""Training and held-out crops of the bundled photos and faces, with flips.

Held-out split:
- photos: each photo is resized so its short side is `context * size`; the right-most
  strip of width max(size, holdout * W) is held out. "train" crops lie entirely left of
  the strip, "test" crops entirely inside it, so no test pixel is ever trained on.
- faces (`lfw_subset`): faces 0..89 are "train", 90..99 are "test"; each face is
  resized to size x size (the crop is the whole face).

Crops are float32 [n, 3, size, size] in [-1, 1] (the tokenizer's range);
`(x + 1) / 2` gives [0, 1] for display.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vqfast.data.photos import PHOTOS, load_faces, load_photo
from vqfast.random import as_generator

SOURCES = ("photos", "faces")
SPLITS = ("train", "test")
N_TRAIN_FACES = 90


class CropSampler:
    """Draws random crops (uniform photo, uniform position, horizontal flip p=0.5).

    split: "train" | "test"; size: crop side in pixels; source: "photos" | "faces";
    context: photos are resized to a short side of context * size (a crop sees about
    1/context of the photo); holdout: share of each photo's width held out for "test".

        crops = CropSampler("train", size=32).sample(16, generator=0)   # [16, 3, 32, 32]
    """

    def __init__(self, split: str = "train", size: int = 32, *, source: str = "photos",
                 photos: tuple[str, ...] = PHOTOS, context: int = 3, holdout: float = 0.25):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if not isinstance(size, int) or size < 4:
            raise ValueError(f"size must be an int >= 4, got {size!r}")
        if not isinstance(context, int) or context < 2:
            raise ValueError(f"context must be an int >= 2, got {context!r}")
        if not 0.0 < holdout < 0.5:
            raise ValueError(f"holdout must be in (0, 0.5), got {holdout!r}")
        self.split, self.size, self.source = split, size, source
        if source == "faces":
            faces = load_faces()
            faces = faces[:N_TRAIN_FACES] if split == "train" else faces[N_TRAIN_FACES:]
            self.images = [F.interpolate(faces, size=(size, size), mode="bilinear",
                                         align_corners=False).clamp_(0.0, 1.0)]
            self.ranges = None
            return
        self.images, self.ranges = [], []
        for name in photos:
            img = load_photo(name, short_side=context * size)
            w = img.shape[2]
            strip = max(size, round(holdout * w))
            lo, hi = (0, w - strip - size) if split == "train" else (w - strip, w - size)
            self.images.append(img)
            self.ranges.append((lo, hi))

    def sample(self, n: int, generator: torch.Generator | int | None = None, *, flip: bool = True) -> torch.Tensor:
        """n crops, float32 [n, 3, size, size] in [-1, 1]; reproducible from `generator`."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        g = as_generator(generator)
        s = self.size
        if self.source == "faces":
            faces = self.images[0]
            out = faces[torch.randint(len(faces), (n,), generator=g)].clone()
        else:
            which = torch.randint(len(self.images), (n,), generator=g).tolist()
            u = torch.rand(n, 2, generator=g)
            out = torch.empty(n, 3, s, s)
            for i, k in enumerate(which):
                img, (lo, hi) = self.images[k], self.ranges[k]
                y = int(u[i, 0] * (img.shape[1] - s + 1))
                x = lo + int(u[i, 1] * (hi - lo + 1))
                out[i] = img[:, y:y + s, x:x + s]
        if flip:
            flips = torch.rand(n, generator=g) < 0.5
            out[flips] = out[flips].flip(-1)
        return out.mul_(2.0).sub_(1.0)


class ClassCrops:
    """Crops labelled by their photo (class c = PHOTOS[c]): a small class-conditional dataset.

        x, labels = ClassCrops("train", 32).sample(8, generator=0)   # [8, 3, 32, 32], [8] int64
    """

    def __init__(self, split: str = "train", size: int = 32):
        self.samplers = [CropSampler(split, size=size, photos=(name,)) for name in PHOTOS]

    @property
    def num_classes(self) -> int:
        return len(self.samplers)

    def spread_labels(self, rows: int) -> torch.Tensor:
        """min(rows, num_classes) class ids [rows] int64 spread evenly over the classes (figure rows)."""
        rows = min(rows, self.num_classes)
        return torch.arange(rows) * (self.num_classes // max(rows, 1))

    def sample(self, n: int, generator=None, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n crops -> (images [n, 3, size, size] in [-1, 1], labels [n] int64); labels: the classes to draw."""
        g = as_generator(generator)
        if labels is None:
            labels = torch.randint(self.num_classes, (n,), generator=g)
        elif not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.shape != (n,) or \
                (n and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes)):
            raise ValueError(f"labels must be int64 [{n}] in [0, {self.num_classes}), got {labels!r}")
        x = torch.stack([self.samplers[int(c)].sample(1, generator=g)[0] for c in labels]) if n else \
            torch.empty(0, 3, self.samplers[0].size, self.samplers[0].size)
        return x, labels
