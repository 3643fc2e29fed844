"""Pseudo-defects (training/pseudo.py): generic anomalies drawn into clean crops with a label,
and the training pipeline that draws them into crops without a defect."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import needs_tensorflow
from training.config import load_config
from training.pseudo import MIN_CHANGE_SD, draw, region_mask, scar_mask


def texture(seed: int = 0, size: int = 96) -> np.ndarray:
    """A blotchy gray texture (float32 HxWx1, 0..255): smoothed noise about 120."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.5)
    return (120 + 25 * noise / noise.std()).astype(np.float32)[..., None]


def test_regions_are_one_piece_and_scars_are_thin_strips():
    rng = np.random.default_rng(0)
    for _ in range(20):
        region = region_mask(rng, 128, 128)
        n, _ = cv2.connectedComponents(region, connectivity=8)
        assert n == 2  # the background and one piece
        assert 8 <= region.sum() <= 0.04 * 128 * 128  # the largest piece of the share drawn
        scar = scar_mask(rng, 128, 128)
        rows, cols = np.nonzero(scar)
        length = np.hypot(np.ptp(rows), np.ptp(cols))
        assert length >= 0.09 * 128  # at least a tenth of the side long
        assert scar.sum() / length <= 10  # and at most about 8 px wide


def test_a_pseudo_defect_changes_the_crop_inside_its_label_only():
    crop, empty = texture(), np.zeros((96, 96, 1), np.uint8)
    for seed in range(20):
        image, mask = draw(crop, empty, seed, ellipse=False)
        changed = np.abs(image - crop)[..., 0] > 1e-3
        assert mask.any() and mask.max() == 1
        # the soft edge reaches a few pixels past the region, nothing further
        near = cv2.dilate(mask[..., 0], np.ones((9, 9), np.uint8)) > 0
        assert not (changed & ~near).any()
        # and the region differs from the crop by enough to be seen
        inside = mask[..., 0] > 0
        assert np.abs(image - crop)[..., 0][inside].mean() >= 0.25 * MIN_CHANGE_SD * crop.std()
        assert crop.min() > 0 and empty.max() == 0  # the inputs are left alone
    # the same seed draws the same defect, another seed another one
    a, b, c = draw(crop, empty, 5, False), draw(crop, empty, 5, False), draw(crop, empty, 6, False)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_on_a_dagm_set_the_label_is_the_weak_ellipse_around_the_drawn_region():
    crop, empty = texture(1, 160), np.zeros((160, 160, 1), np.uint8)
    for seed in range(10):
        _, exact = draw(crop, empty, seed, ellipse=False)
        _, ellipse = draw(crop, empty, seed, ellipse=True)
        assert (ellipse[exact > 0] == 1).all()  # the ellipse holds the whole region
        assert ellipse.sum() > exact.sum()  # with the texture around it, as DAGM labels are


@needs_tensorflow
@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_training_crops_without_a_defect_get_a_pseudo_defect(tmp_path, fraction):
    """Eight clean images: at fraction 1 every crop holds a labelled pseudo-defect, the same
    ones again for the same seed; at 0 every crop stays clean."""
    from training.datasets import load_folders
    from training.pipeline import train_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(8):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), texture(i, 64)[..., 0].astype(np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"{i}.png"), np.zeros((64, 64), np.uint8))
    samples, _ = load_folders(tmp_path, train_fraction=1.0)
    cfg = load_config(
        {
            "dataset": {"kind": "folders", "root": str(tmp_path)},
            "input": {"crop": 48, "batch_size": 8, "pseudo_defect_fraction": fraction},
            "train": {"epochs": 1, "steps_per_epoch": 3},
        }
    )
    batches = [m.numpy() for _, m in train_dataset(samples, cfg, seed=0)]
    with_defect = sum(int(m.any(axis=(1, 2, 3)).sum()) for m in batches)
    assert with_defect == (24 if fraction else 0)
    if fraction:
        again = [m.numpy() for _, m in train_dataset(samples, cfg, seed=0)]
        assert all(np.array_equal(a, b) for a, b in zip(again, batches, strict=True))
