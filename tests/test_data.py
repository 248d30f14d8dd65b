"""vqfast.data: bundled photos load offline, crops/split/flips, mask generators."""
import pytest
import torch

from vqfast.data import (MASK_KINDS, PHOTOS, CropSampler, load_faces, load_photo, make_masks, pixel_to_token_mask,
                         token_to_pixel_mask)


@pytest.fixture(scope="module")
def samplers():
    return {split: CropSampler(split, size=16, context=3) for split in ("train", "test")}


@pytest.mark.parametrize("name", PHOTOS)
def test_photo_loads(name):
    img = load_photo(name, short_side=40)
    assert img.dtype == torch.float32 and img.shape[0] == 3 and min(img.shape[1:]) == 40
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01


def test_faces():
    faces = load_faces()
    assert faces.shape == (100, 3, 25, 25)
    assert faces.std() > 0.05


@pytest.mark.parametrize("split", ["train", "test"])
def test_crops_shape_range_seed(samplers, split):
    s = samplers[split]
    x = s.sample(12, generator=5)
    assert x.shape == (12, 3, 16, 16) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x, s.sample(12, generator=5))
    assert not torch.equal(x, s.sample(12, generator=6))


def test_heldout_strip_is_disjoint(samplers):
    tr, te = samplers["train"], samplers["test"]
    for (lo, hi), (tlo, thi), img in zip(tr.ranges, te.ranges, tr.images):
        assert 0 <= lo <= hi and hi + tr.size <= tlo <= thi and thi + tr.size <= img.shape[2]


def test_flip_is_horizontal(samplers):
    s = samplers["train"]
    a = s.sample(64, generator=1, flip=False)
    g = torch.Generator().manual_seed(1)
    b = s.sample(64, generator=g, flip=True)
    same = (a == b).flatten(1).all(1)
    flipped = (a.flip(-1) == b).flatten(1).all(1)
    assert (same | flipped).all() and flipped.any() and same.any()


def test_faces_split():
    tr = CropSampler("train", size=20, source="faces").sample(4, generator=0)
    te = CropSampler("test", size=20, source="faces")
    assert tr.shape == (4, 3, 20, 20) and te.images[0].shape[0] == 10


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("h, w", [(8, 8), (16, 12), (32, 32)])
def test_masks(kind, h, w):
    m = make_masks(kind, 20, h, w, generator=3)
    assert m.shape == (20, h, w) and m.dtype == torch.bool
    assert m.flatten(1).any(1).all(), "every mask has a missing position"
    assert (~m).flatten(1).any(1).all(), "every mask keeps a known position"
    assert torch.equal(m, make_masks(kind, 20, h, w, generator=3))


def test_half_mask_is_half():
    m = make_masks("half", 16, 8, 8, generator=0)
    assert (m.flatten(1).sum(1) == 32).all()


def test_pixel_to_token_mask():
    m = torch.zeros(2, 8, 8, dtype=torch.bool)
    m[0, 0, 0] = True
    m[1, 4:, 4:] = True
    t = pixel_to_token_mask(m, (2, 2))
    assert t.tolist() == [[[True, False], [False, False]], [[False, False], [False, True]]]
    assert token_to_pixel_mask(t, (8, 8))[1].equal(m[1])
    with pytest.raises(ValueError, match="multiple"):
        pixel_to_token_mask(m, (3, 3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        make_masks("circle", 1, 4, 4)
    with pytest.raises(ValueError, match="split"):
        CropSampler("val")
    with pytest.raises(TypeError, match="generator"):
        make_masks("box", 1, 4, 4, generator="seed")
    with pytest.raises(ValueError, match="photo"):
        load_photo("lena")


def test_class_crops_labels_follow_photos_and_are_reproducible():
    from vqfast.data import PHOTOS, ClassCrops, CropSampler
    data = ClassCrops("test", 16)
    assert data.num_classes == len(PHOTOS)
    x, y = data.sample(6, generator=3)
    assert x.shape == (6, 3, 16, 16) and y.dtype == torch.long and y.shape == (6,)
    x2, y2 = data.sample(6, generator=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    labels = torch.tensor([2, 0])
    x, y = data.sample(2, generator=torch.Generator().manual_seed(5), labels=labels)
    assert torch.equal(y, labels)
    # each crop comes from its class's photo: the same draw from that photo's own sampler
    ref = CropSampler("test", size=16, photos=(PHOTOS[2],)).sample(1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x[0], ref[0])
    with pytest.raises(ValueError, match="labels"):
        data.sample(2, labels=torch.tensor([0, len(PHOTOS)]))


def test_class_crops_spread_labels():
    from vqfast.data import ClassCrops
    data = ClassCrops("test", 16)
    K = data.num_classes
    for rows in (1, 2, K - 1, K, K + 5):
        labels = data.spread_labels(rows)
        assert labels.dtype == torch.long and len(labels) == min(rows, K)
        assert len(set(labels.tolist())) == len(labels) and 0 <= int(labels.min()) and int(labels.max()) < K
        data.sample(len(labels), generator=0, labels=labels)  # valid labels for sample
    assert data.spread_labels(0).numel() == 0
