"""Copy-paste augmentation (training/paste.py): the patches cut from labels, the paste itself,
and the training pipeline that pastes into crops without a defect."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import needs_tensorflow
from training.config import load_config
from training.paste import FEATHER_PX, DefectBank, cut_patches


def test_each_labelled_region_is_one_patch_that_fades_out_over_its_rim():
    image = np.full((100, 100), 80, np.uint8)
    mask = np.zeros((100, 100), np.uint8)
    mask[10:20, 10:40] = 1  # a bar
    mask[60:90, 95:100] = 1  # another, upright, at the right edge
    mask[95, 2] = 1  # a stray pixel: no patch
    image[mask > 0] = 200
    patches = sorted(cut_patches(image, mask), key=lambda p: p.image.shape[0])
    assert [p.image.shape for p in patches] == [
        (10 + 4 * FEATHER_PX, 30 + 4 * FEATHER_PX),
        (30 + 4 * FEATHER_PX, 5 + 2 * FEATHER_PX),
    ]
    bar = patches[0]
    assert np.array_equal(bar.alpha == 1.0, bar.mask == 1)  # whole on the label
    assert bar.alpha[0].max() == 0 and bar.alpha[:, 0].max() == 0  # nothing at the patch's edge
    assert 0 < bar.alpha[2 * FEATHER_PX - 1, 2 * FEATHER_PX + 5] < 1  # a pixel just outside fades
    assert np.array_equal(bar.image[bar.mask == 1], np.full(300, 200.0))
    # the second region reaches the image's right edge: its rim is cut there
    assert patches[1].alpha[:, -1].max() == 1.0


def bank_of_one(value: float, background: float) -> DefectBank:
    image = np.full((40, 40), background, np.float32)
    mask = np.zeros((40, 40), np.uint8)
    mask[15:25, 12:30] = 1
    image[mask > 0] = value
    return DefectBank({3: cut_patches(image, mask)})


def test_a_paste_lands_whole_with_its_label_in_the_crops_brightness():
    bank = bank_of_one(value=250.0, background=200.0)  # cut from a bright image
    crop = np.full((64, 64, 1), 50.0, np.float32)  # pasted into a dark one
    empty = np.zeros((64, 64, 1), np.uint8)
    seen = set()
    for seed in range(12):
        image, mask = bank.paste(crop, empty, 3, seed)
        assert mask.sum() == 10 * 18  # the label whole, turned or not
        seen.add(tuple(np.argwhere(mask[..., 0]).min(axis=0)))
        # the label's pixels are the defect, 50 above the crop as they were 50 above theirs
        assert np.allclose(image[mask > 0], 100.0)
        # and the rim is the crop's brightness: nothing else in the crop changed
        assert np.allclose(image[mask == 0], 50.0)
        assert crop.max() == 50.0 and empty.max() == 0  # the inputs are left alone
    assert len(seen) > 6  # placed at random
    image, mask = bank.paste(crop, empty, 7, 0)  # a class with no defect: nothing to paste
    assert image is crop and mask is empty


def test_a_decoy_moves_the_crops_own_texture_in_a_labels_shape_and_labels_nothing():
    bank = bank_of_one(value=250.0, background=200.0)
    bank.decoy_fraction = 1.0
    crop = np.random.default_rng(0).uniform(0, 255, (64, 64, 1)).astype(np.float32)
    empty = np.zeros((64, 64, 1), np.uint8)
    for seed in range(6):
        image, mask = bank.paste(crop, empty, 3, seed)
        assert mask.max() == 0
        changed = np.abs(image - crop)[..., 0] > 1e-3
        # within one patch's box (the label and its rim), and none of the defect's brightness
        rows, cols = np.nonzero(changed)
        assert 10 * 18 <= changed.sum() <= (10 + 4 * FEATHER_PX) * (18 + 4 * FEATHER_PX)
        assert np.ptp(rows) < 18 + 4 * FEATHER_PX and np.ptp(cols) < 18 + 4 * FEATHER_PX
    # what is moved is the crop's own texture: a flat crop stays flat
    flat = np.full((64, 64, 1), 50.0, np.float32)
    assert np.allclose(bank.paste(flat, empty, 3, 1)[0], 50.0)
    bank.decoy_fraction = 0.5  # a share of the pastes
    labelled = sum(bank.paste(crop, empty, 3, seed)[1].max() for seed in range(40))
    assert 10 <= labelled <= 30


def test_a_patch_larger_than_the_crop_is_cut_around_its_label():
    image = np.full((200, 200), 100, np.float32)
    mask = np.zeros((200, 200), np.uint8)
    mask[20:180, 98:102] = 1  # a long scratch
    bank = DefectBank({1: cut_patches(image, mask)})
    out, out_mask = bank.paste(np.zeros((64, 64, 1), np.float32), np.zeros((64, 64, 1), np.uint8), 1, 5)
    assert out.shape == (64, 64, 1) and out_mask.shape == (64, 64, 1)
    assert 64 * 4 - 8 <= out_mask.sum() <= 64 * 4  # the scratch runs across the whole crop


@needs_tensorflow
@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_training_crops_without_a_defect_get_one_pasted(tmp_path, fraction):
    """Two images with a bright bar and their exact masks, six clean ones: at fraction 1 every
    crop holds a defect, and the mask is still exactly the bright pixels after the crop's flips
    and turns; at 0 the clean images' crops stay clean."""
    from training.datasets import load_folders
    from training.pipeline import train_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        image = np.full((48, 48), 60, np.uint8)
        if i < 2:
            x, y = rng.integers(0, 40, 2)
            image[y : y + 12, x : x + 5] = 200
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), image)
        cv2.imwrite(str(tmp_path / "masks" / f"{i}.png"), (image > 100).astype(np.uint8) * 255)
    samples, _ = load_folders(tmp_path, train_fraction=1.0)
    cfg = load_config(
        {
            "dataset": {"kind": "folders", "root": str(tmp_path)},
            "input": {
                "crop": 32,
                "batch_size": 8,
                "defect_paste_fraction": fraction,
                "augment": {"brightness": 0.0, "contrast": 0.0},
            },
            "train": {"epochs": 1, "steps_per_epoch": 4},
        }
    )
    with_defect, batches = 0, list(train_dataset(samples, cfg, seed=0))
    for images, masks in batches:
        assert np.array_equal(images.numpy() > 0.5, masks.numpy() > 0.5)
        with_defect += int(masks.numpy().any(axis=(1, 2, 3)).sum())
    if fraction:
        assert with_defect == 32
        again = [m.numpy() for _, m in train_dataset(samples, cfg, seed=0)]
        assert all(np.array_equal(a, m.numpy()) for a, (_, m) in zip(again, batches, strict=True))
    else:
        # only the defective images' crops: each image comes once per pass over the set
        passes = -(-32 // len(samples))
        assert with_defect <= passes * sum(s.defective for s in samples) < 32


@needs_tensorflow
@pytest.mark.slow
def test_a_training_run_pastes_its_own_defects_and_says_so(dagm_root, tmp_path, caplog):
    import logging

    from tests.training.conftest import tiny_recipe
    from training.datasets import load_dagm
    from training.train import train

    recipe = tiny_recipe(dagm_root, tmp_path / "paste", epochs=1)
    recipe["input"].update(defect_paste_fraction=0.5, paste_decoy_fraction=0.5)
    train_samples, _ = load_dagm(dagm_root, [1, 2])
    with caplog.at_level(logging.INFO, logger="training.paste"):
        out = train(recipe)
    said = [r.getMessage() for r in caplog.records if "copy-paste" in r.getMessage()]
    assert len(said) == 1
    assert "of 2 class(es) pasted into 50% of the crops without one (50% of them decoys)" in said[0]
    # the labels of the training images, not of those held out to calibrate
    assert 0 < int(said[0].split()[1]) <= sum(s.defective for s in train_samples)
    assert (out / "model.keras").exists()
