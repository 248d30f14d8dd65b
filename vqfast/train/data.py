"""Training images: a folder of the user's images or the bundled photos / faces, a held-out
split, per-sample augmentation, and the order in which every rank reads them.

    data = open_images("path/to/images", resolution=64, split="train")
    x, labels = data[0]                               # [3, 64, 64] in [-1, 1], int
    plan = BatchPlan(len(data), batch_size=8, world_size=2, seed=0)
    plan.keys(micro_batch=5, rank=1)                  # [(index, augmentation seed), ...]

Folder rules: files are found recursively (jpg, jpeg, png, webp, bmp); when every image
lies in a subfolder, the first folder level names the class (the ImageFolder convention).
An image is held out when a hash of its path relative to the folder falls below `holdout`,
so the split is the same on every rank and every run, whatever the file order. Unreadable
or truncated images are replaced by the next readable one (deterministically) and counted.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
BUNDLED = ("photos", "faces")
SPLITS = ("train", "test")
_BUNDLED_POOL = {"train": 1024, "test": 128}  # crops drawn once from the bundled photos


def _mix(*values: int) -> int:
    """A 63-bit seed from ints (stable across machines and Python runs)."""
    h = hashlib.blake2b(b" ".join(str(v).encode() for v in values), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def load_image(path: Path) -> torch.Tensor:
    """One image file -> float32 [3, H, W] in [0, 1]; grayscale, palette, RGBA and 16-bit
    images are converted. Raises OSError / ValueError when the file cannot be decoded."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(img, dtype=np.float32)
            # 16-bit modes are scaled by their full range (a dark image stays dark); 32-bit
            # "I" holds 16-bit data from some decoders and 8-bit data from others
            a = a / (255.0 if img.mode == "I" and a.max() <= 255 else 65535.0)
            a = np.repeat(a[..., None], 3, axis=2)
        else:
            if img.mode in ("P", "PA", "LA", "RGBA"):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if a.ndim != 3 or min(a.shape[:2]) < 1:
        raise ValueError(f"{path}: decoded to shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).clamp_(0.0, 1.0)


def augment(img: torch.Tensor, resolution: int, seed: int | None) -> torch.Tensor:
    """[3, H, W] in [0, 1] -> [3, R, R] in [-1, 1]: the short side resized to R (antialiased),
    then a crop along the long side and a horizontal flip drawn from `seed` (None: centre
    crop, no flip; the held-out images)."""
    h, w = img.shape[1:]
    if min(h, w) != resolution:
        s = resolution / min(h, w)
        size = (max(resolution, round(h * s)), max(resolution, round(w * s)))
        img = F.interpolate(img[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    h, w = img.shape[1:]
    if seed is None:
        y, x, flip = (h - resolution) // 2, (w - resolution) // 2, False
    else:
        rng = random.Random(seed)
        y, x, flip = rng.randint(0, h - resolution), rng.randint(0, w - resolution), rng.random() < 0.5
    out = img[:, y:y + resolution, x:x + resolution]
    if flip:
        out = out.flip(-1)
    return out.clamp(0.0, 1.0) * 2.0 - 1.0


def held_out(relative_path: str, holdout: float) -> bool:
    """True when the image at this path (relative to the data folder) belongs to the held-out split."""
    return _mix(relative_path) / 2.0 ** 63 < holdout


class ImageFolder:
    """The images of one split of a folder; item (index, augmentation seed) -> (image [3, R, R]
    in [-1, 1], class label int (-1 without classes), unreadable files passed over).

    root: the folder; resolution: output side; split: "train" | "test"; holdout: share of
    images held out for "test" (by path hash, see the module docstring).
    """

    def __init__(self, root: str | Path, resolution: int, *, split: str = "train", holdout: float = 0.05):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"data must be a folder of images or one of {BUNDLED}, got {str(root)!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0.0 <= holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.empty_files = sum(1 for p in files if p.stat().st_size == 0)
        files = [p for p in files if p.stat().st_size > 0]
        if not files:
            raise ValueError(f"data folder {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}, searched "
                             f"recursively{f'; {self.empty_files} empty files' if self.empty_files else ''})")
        rel = [p.relative_to(root).as_posix() for p in files]
        self.classes = sorted({r.split("/")[0] for r in rel}) if all("/" in r for r in rel) else []
        keep = [i for i, r in enumerate(rel) if held_out(r, holdout) == (split == "test")]
        if not keep:
            raise ValueError(f"the {split!r} split of {str(root)!r} is empty ({len(files)} images, holdout={holdout}): "
                             f"add images or change the holdout")
        self.root, self.resolution, self.split = root, resolution, split
        self.files = [files[i] for i in keep]
        index = {c: k for k, c in enumerate(self.classes)}
        self.labels = [index[rel[i].split("/")[0]] if self.classes else -1 for i in keep]
        self._bad: set[int] = set()  # per process (each DataLoader worker keeps its own)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int | None]) -> tuple[torch.Tensor, int, int]:
        """-> (image, label, number of unreadable files passed over to find it)."""
        from PIL.Image import DecompressionBombError

        index, seed = key if isinstance(key, tuple) else (key, None)
        for k in range(len(self.files)):
            i = (index + k) % len(self.files)
            if i in self._bad:
                continue
            try:
                img = load_image(self.files[i])
            except (OSError, ValueError, SyntaxError, DecompressionBombError):  # unreadable, truncated, huge
                self._bad.add(i)
                continue
            return augment(img, self.resolution, seed), self.labels[i], k
        raise ValueError(f"no image of {str(self.root)!r} ({self.split} split) could be read")


class TensorImages:
    """Images held in memory ([N, 3, R, R] in [0, 1]) with labels; item (index, seed) ->
    (image in [-1, 1], label), flipped when the seed says so."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, classes: list[str]):
        self.images, self.classes = images, classes
        self.labels = labels.tolist() if labels is not None else [-1] * len(images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int | None]) -> tuple[torch.Tensor, int, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        return augment(self.images[index], self.images.shape[-1], seed), self.labels[index], 0


def bundled_images(source: str, resolution: int, split: str = "train") -> TensorImages:
    """The bundled photos (crops labelled by photo) or faces (unlabelled) as a TensorImages."""
    from vqfast.data import PHOTOS, ClassCrops, CropSampler

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source == "faces":
        return TensorImages(CropSampler(split, resolution, source="faces").images[0], None, [])
    crops, labels = ClassCrops(split, resolution).sample(_BUNDLED_POOL[split], generator=0 if split == "train" else 1)
    return TensorImages((crops + 1) / 2, labels, list(PHOTOS))


def open_images(data: str | Path, resolution: int, *, split: str = "train", holdout: float = 0.05):
    """`data` ("photos", "faces" or a folder) -> the split's dataset (ImageFolder or TensorImages)."""
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if isinstance(data, str) and data in BUNDLED:
        return bundled_images(data, resolution, split)
    return ImageFolder(data, resolution, split=split, holdout=holdout)


class BatchPlan:
    """Which samples each rank reads at each micro-batch, as a pure function of the position.

    The sample stream is epoch after epoch of a permutation of the dataset drawn from
    (seed, epoch). Micro-batch j reads stream positions [j * G, (j + 1) * G) with G =
    batch_size * world_size; rank r takes the r-th contiguous block of batch_size. So one
    process with batch 2B reads exactly what two processes with batch B read together, and a
    resumed run reads on from its micro-batch index (the data position in the checkpoint).
    Each sample's augmentation seed comes from (seed, stream position).
    """

    def __init__(self, n: int, batch_size: int, *, world_size: int = 1, seed: int = 0):
        if n < 1:
            raise ValueError(f"the dataset is empty (n={n})")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.n, self.batch_size, self.world_size, self.seed = n, batch_size, world_size, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(_mix(self.seed, "epoch", epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def keys(self, micro_batch: int, rank: int = 0) -> list[tuple[int, int]]:
        """[(dataset index, augmentation seed)] * batch_size for this rank's share of micro_batch."""
        start = (micro_batch * self.world_size + rank) * self.batch_size
        out = []
        for p in range(start, start + self.batch_size):
            out.append((int(self._permutation(p // self.n)[p % self.n]), _mix(self.seed, "sample", p)))
        return out


class PlannedBatches(torch.utils.data.Sampler):
    """The BatchPlan of one rank from micro-batch `start` on, as a DataLoader batch sampler."""

    def __init__(self, plan: BatchPlan, rank: int, start: int, stop: int):
        self.plan, self.rank, self.start, self.stop = plan, rank, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for j in range(self.start, self.stop):
            yield self.plan.keys(j, self.rank)


def collate(items: list[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """[(image, label, skipped)] -> (images [B, 3, R, R], labels [B] int64, unreadable files passed over)."""
    return (torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items], dtype=torch.long),
            sum(k for _, _, k in items))


def batches(dataset, plan: BatchPlan, rank: int, start: int, stop: int, workers: int = 0):
    """An iterator of (images, labels, skipped files) over micro-batches [start, stop) of this rank."""
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative int, got {workers!r}")
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=PlannedBatches(plan, rank, start, stop),
                                            collate_fn=collate, num_workers=workers,
                                            persistent_workers=False))
