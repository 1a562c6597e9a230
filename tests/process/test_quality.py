"""The training augmentation: crop-scale 1 shifts the evaluation view and never zooms.

scripts/bench.py quality measured that zoomed crops (RandomResizedCrop) cost accuracy
on real photographs at the default training budget, because objects at
training time are not the size they are at test time; crop-scale 1 keeps them
the same size. These tests pin that down pixel for pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from contract.preprocess import Preprocessing, normalize
from trainer import data


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)).save(path)
    return path


def evaluation_resize(path, prep: Preprocessing) -> np.ndarray:
    """The image as the evaluation transform resizes it, before its centre crop, normalised (HWC)."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    resized = img.resize((int(prep.resize_size * w / h), prep.resize_size), Image.BILINEAR)
    return normalize(resized, prep).transpose(1, 2, 0)


def placed_at(view: np.ndarray, full: np.ndarray, size: int) -> bool:
    """Whether `view` (or its mirror image) is a size x size window of `full`, to rounding."""
    for candidate in (view, view[:, :, ::-1]):
        hwc = candidate.transpose(1, 2, 0)
        for top in range(full.shape[0] - size + 1):
            for left in range(full.shape[1] - size + 1):
                if np.abs(full[top : top + size, left : left + size] - hwc).max() < 0.05:
                    return True
    return False


def views(path, prep, crop_scale: float, epochs: int = 8) -> list[np.ndarray]:
    """The image's training view in each of `epochs` epochs (a view is a function of seed, epoch and index)."""
    dataset = data.ImageDataset([(path, 0)], prep, train=True, crop_scale=crop_scale)
    seen = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        seen.append(dataset[0][0].numpy())
    return seen


def test_crop_scale_one_shifts_the_evaluation_view(photo):
    prep = Preprocessing.for_image_size(32)
    full = evaluation_resize(photo, prep)
    seen = views(photo, prep, crop_scale=1.0)
    assert all(placed_at(view, full, prep.image_size) for view in seen)
    assert len({view.tobytes() for view in seen}) > 1  # the place (and the flip) vary


def test_smaller_crop_scales_zoom(photo):
    prep = Preprocessing.for_image_size(32)
    full = evaluation_resize(photo, prep)
    assert not any(placed_at(view, full, prep.image_size) for view in views(photo, prep, crop_scale=0.08))
