"""vqfast.train.data: the image folder (conversion, skipped files, classes, held-out split),
the empty-folder errors and the batch plan shared by ranks."""
import shutil

import numpy as np
import pytest
import torch

from tests.train.conftest import N_GOOD
from vqfast.train.data import BatchPlan, ImageFolder, batches, held_out, load_image, open_images


def test_folder_finds_images_recursively_with_classes(image_folder):
    train = ImageFolder(image_folder, 16, holdout=0.0)
    assert train.classes == ["cats", "dogs"]
    assert len(train) == N_GOOD + 1  # + the corrupt file, which is only found unreadable when read
    assert train.empty_files == 1
    names = {p.name for p in train.files}
    assert "notes.txt" not in names and "empty.jpg" not in names
    assert sorted(set(train.labels)) == [0, 1]


@pytest.mark.parametrize("name", ["cats/gray.jpg", "dogs/rgba.png", "dogs/deep.png", "dogs/img00.png"])
def test_every_mode_loads_as_rgb_in_range(image_folder, name):
    img = load_image(image_folder / name)
    assert img.shape[0] == 3 and img.dtype == torch.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() > 0.05
    if name == "dogs/deep.png":  # 16-bit values scaled by 65535, not clipped to 255
        assert img.max() < 1.0


def test_gray_image_has_three_equal_channels(image_folder):
    img = load_image(image_folder / "cats" / "gray.jpg")
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_corrupt_file_is_skipped_and_counted(image_folder):
    data = ImageFolder(image_folder, 16, holdout=0.0)
    bad = [i for i, p in enumerate(data.files) if p.name == "corrupt.png"][0]
    x, label, skipped = data[(bad, 3)]
    assert skipped == 1 and x.shape == (3, 16, 16)
    x_next, label_next, _ = data[((bad + 1) % len(data), 3)]
    assert torch.equal(x, x_next) and label == label_next
    images, labels, skipped = next(batches(data, BatchPlan(len(data), len(data), seed=0), 0, 0, 1))
    assert images.shape == (len(data), 3, 16, 16) and skipped == 1
    assert -1.0 <= images.min() and images.max() <= 1.0


def test_augmentation_is_a_function_of_the_seed(image_folder):
    data = ImageFolder(image_folder, 24, holdout=0.0)
    assert torch.equal(data[(0, 11)][0], data[(0, 11)][0])
    views = {tuple(data[(0, s)][0].flatten()[:50].tolist()) for s in range(12)}
    assert len(views) > 1  # crops and flips vary with the seed
    assert torch.equal(data[(0, None)][0], data[0][0])  # no seed: the centre crop


def test_split_is_disjoint_and_independent_of_the_folder_location(image_folder, tmp_path):
    train, test = (ImageFolder(image_folder, 16, split=s, holdout=0.3) for s in ("train", "test"))
    rel = lambda d: {p.relative_to(d.root).as_posix() for p in d.files}  # noqa: E731
    assert rel(train).isdisjoint(rel(test)) and len(train) + len(test) == N_GOOD + 1
    copy = shutil.copytree(image_folder, tmp_path / "elsewhere")
    assert rel(ImageFolder(copy, 16, split="test", holdout=0.3)) == rel(test)
    assert all(held_out(r, 0.3) for r in rel(test))


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "holds no images"),
    (lambda p: (p / "a.txt").write_text("x") and p, "holds no images"),
    (lambda p: (p / "a.png").write_bytes(b"") or p, "1 empty files"),
    (lambda p: p / "missing", "must be a folder of images"),
], ids=["empty", "no-images", "only-empty-files", "missing"])
def test_folder_without_images_is_a_clear_error(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        open_images(make(tmp_path), 16)


def test_bundled_faces_open_without_a_folder():
    faces = open_images("faces", 16)
    x, label, skipped = faces[(0, 1)]
    assert x.shape == (3, 16, 16) and label == -1 and skipped == 0


def test_plan_two_ranks_read_what_one_rank_reads_with_the_doubled_batch():
    one, two = BatchPlan(10, 4, seed=3), BatchPlan(10, 2, world_size=2, seed=3)
    for j in range(6):
        assert one.keys(j) == two.keys(j, 0) + two.keys(j, 1)


def test_plan_visits_every_sample_once_per_epoch():
    plan = BatchPlan(12, 3, world_size=2, seed=0)
    first = [i for j in range(2) for r in range(2) for i, _ in plan.keys(j, r)]
    assert sorted(first) == list(range(12))
    second = [i for j in range(2, 4) for r in range(2) for i, _ in plan.keys(j, r)]
    assert sorted(second) == list(range(12)) and second != first


def test_plan_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch_size"):
        BatchPlan(5, 0)
    with pytest.raises(ValueError, match="empty"):
        BatchPlan(0, 2)


def test_sixteen_bit_image_is_scaled_by_its_full_range(tmp_path):
    from PIL import Image

    values = (np.arange(30 * 20).reshape(30, 20) % 200).astype(np.uint16)  # a dark 16-bit image
    Image.fromarray(values).save(tmp_path / "dark.png")
    img = load_image(tmp_path / "dark.png")
    assert torch.allclose(img[0], torch.from_numpy(values / 65535.0).float())


@pytest.mark.filterwarnings("ignore:Image size")  # Pillow warns for the images between 1x and 2x the limit
def test_image_over_pillows_size_limit_is_skipped_and_counted(image_folder, monkeypatch):
    from PIL import Image

    Image.new("RGB", (80, 80), (9, 9, 9)).save(image_folder / "cats" / "zbig.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses images over 2000 pixels
    data = ImageFolder(image_folder, 16, holdout=0.0)
    big = [i for i, p in enumerate(data.files) if p.name == "zbig.png"][0]
    x, _, skipped = data[(big, 0)]
    assert skipped == 1 and x.shape == (3, 16, 16)
    assert not torch.equal(x, torch.full_like(x, 9 / 255 * 2 - 1))
