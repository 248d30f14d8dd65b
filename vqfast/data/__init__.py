"""Bundled real photos -> crops (with flips and a held-out split) and inpainting masks.

Nothing is downloaded: the photos ship inside scikit-image, scikit-learn and
matplotlib. Masks are bool with True = missing (see `vqfast.data.masks`); every random
function takes `generator` (a torch.Generator, an int seed, or None; see
`vqfast.data.seeding`).

    from vqfast.data import CropSampler, make_masks
    x = CropSampler("test", size=32).sample(8, generator=0)   # [8, 3, 32, 32] in [-1, 1]
    m = make_masks("box", 8, 8, 8, generator=0)              # token-grid masks
"""
from vqfast.data.crops import SOURCES, SPLITS, ClassCrops, CropSampler
from vqfast.data.masks import (MASK_KINDS, box_masks, half_masks, make_masks, outside_masks, pixel_to_token_mask,
                               stroke_masks, token_to_pixel_mask)
from vqfast.data.photos import PHOTOS, load_faces, load_photo
from vqfast.random import as_generator

__all__ = ["ClassCrops", "CropSampler", "MASK_KINDS", "PHOTOS", "SOURCES", "SPLITS", "as_generator", "box_masks", "half_masks",
           "load_faces", "load_photo", "make_masks", "outside_masks", "pixel_to_token_mask", "stroke_masks",
           "token_to_pixel_mask"]
