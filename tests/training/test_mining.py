"""Hard-negative mining: aimed crops, the pipeline reading live hints, the miner callback, recipes, a run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import needs_tensorflow
from tests.training.conftest import tiny_recipe
from training.config import ConfigError, load_config
from training.datasets.base import Sample

MARK = 255  # the marker pixel; the backgrounds below stay far darker


def _marked(size: int, row: int, col: int):
    """A clean uint8 image (flat grey, one marker pixel at row, col) and its empty mask, as tensors."""
    import tensorflow as tf

    image = np.full((size, size, 1), 60, np.uint8)
    image[row, col] = MARK
    return tf.constant(image), tf.zeros([size, size, 1], tf.uint8)


def _hits(fraction: float, hint, seeds: range, mask=None, size: int = 128, marker=None) -> float:
    """The share of 32 px crops that hold the marker (at ``marker``, default ``hint``), over ``seeds``."""
    import tensorflow as tf

    from training.pipeline import _crop

    image, empty = _marked(size, *(marker or hint))
    mask = empty if mask is None else mask
    hits = 0
    for i in seeds:
        crop, _ = _crop(image, mask, 32, 0.0, tf.constant([5, i], tf.int64), tf.constant(hint), fraction)
        assert crop.shape == (32, 32, 1)
        hits += int(np.asarray(crop).max() == MARK)
    return hits / len(seeds)


@needs_tensorflow
@pytest.mark.parametrize("hint", [(64, 64), (0, 0), (127, 127), (3, 120), (100, 30)])
def test_crop_follows_the_hint_on_a_clean_image(hint):
    assert _hits(1.0, hint, range(40)) == 1.0


@needs_tensorflow
def test_crop_ignores_the_hint_when_off_absent_or_defective():
    import tensorflow as tf

    # without mining the marker is in a crop by chance only (about (32/128)^2 of the time)
    assert _hits(0.0, (64, 64), range(200)) < 0.25
    assert 0.3 < _hits(0.5, (64, 64), range(200)) < 0.75
    # -1: not mined yet
    assert _hits(1.0, (-1, -1), range(200), marker=(64, 64)) < 0.25
    # an image with a defect keeps its own crops (defect_crop_fraction, here 0: random ones)
    mask = np.zeros((128, 128, 1), np.uint8)
    mask[5:8, 5:8] = 1
    assert _hits(1.0, (100, 100), range(200), mask=tf.constant(mask)) < 0.25


def _clean_folder(root: Path, n: int, size: int, seed: int = 0) -> tuple[list[Sample], np.ndarray]:
    """``n`` clean images with one bright 3x3 spot (its centre brightest) each; and the centres."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples, centres = [], []
    for i in range(n):
        image = rng.integers(40, 90, (size, size)).astype(np.uint8)
        r, c = rng.integers(1, size - 1, 2)
        image[r - 1 : r + 2, c - 1 : c + 2] = 200
        image[r, c] = MARK
        path = root / f"{i}.png"
        cv2.imwrite(str(path), image)
        samples.append(Sample(image=str(path), class_id=1))
        centres.append((r, c))
    return samples, np.asarray(centres, np.int32)


def _pipeline_cfg(root: Path, epochs: int, steps: int) -> dict:
    return load_config(
        {
            "dataset": {"kind": "folders", "root": str(root)},
            "input": {
                "crop": 32,
                "batch_size": 4,
                "hard_negative_fraction": 1.0,
                "augment": {"brightness": 0.0, "contrast": 0.0},
            },
            "train": {"epochs": epochs, "steps_per_epoch": steps},
        }
    )


@needs_tensorflow
def test_the_pipeline_reads_the_hints_as_they_are_now(tmp_path):
    """The whole multi-epoch pipeline is built before training: hints written later must reach it."""
    from training.mining import make_hints
    from training.pipeline import train_dataset

    samples, centres = _clean_folder(tmp_path, 4, 64)
    hints = make_hints(len(samples))
    batches = iter(train_dataset(samples, _pipeline_cfg(tmp_path, 3, 6), seed=0, hints=hints))

    def all_marked(images) -> bool:
        return bool((np.asarray(images).max(axis=(1, 2, 3)) > 0.99).all())

    before = [all_marked(next(batches)[0]) for _ in range(6)]
    time.sleep(0.5)  # as a training step would: prefetch and the parallel map run ahead meanwhile
    hints.assign(centres)
    after = [all_marked(next(batches)[0]) for _ in range(12)]
    assert sum(before) <= 1  # random crops of 32 in 64 px: all four marked is rare
    # the batches made ahead still hold the old hints (3 of 6 here); every later crop is aimed,
    # the whole epoch after next at the latest
    lag = after.index(True)
    print(f"batches made with the old hints: {lag}")
    assert all(after[lag:]) and lag <= 6


def _bright_spot_model():
    """A fixed 1x1 conv + sigmoid: probability near 1 where the input is bright, near 0 elsewhere."""
    import keras

    inputs = keras.Input((None, None, 1))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.full((1, 1, 1, 1), 20.0, np.float32), np.full((1,), -10.0, np.float32)])
    return model


def _miner_setup(tmp_path: Path, start_epoch: int = 0, n_clean: int = 5):
    from training.mining import make_hints, make_miner

    samples, centres = _clean_folder(tmp_path / "images", n_clean, 64, seed=1)
    # a defective image: the hint table keeps -1 for it, whatever it looks like
    defect_image, defect_mask = tmp_path / "d.png", tmp_path / "d_mask.png"
    cv2.imwrite(str(defect_image), np.full((64, 64), MARK, np.uint8))
    cv2.imwrite(str(defect_mask), np.full((64, 64), 255, np.uint8))
    samples.insert(2, Sample(image=str(defect_image), mask=str(defect_mask), class_id=1, defective=True))
    centres = np.insert(centres, 2, [-1, -1], axis=0)
    cfg = _pipeline_cfg(tmp_path, 4, 1)
    cfg["eval"]["batch_size"] = 2
    hints = make_hints(len(samples))
    miner = make_miner(samples, cfg, hints, tmp_path / "checkpoints", start_epoch)
    miner.set_model(_bright_spot_model())
    miner.set_params({"epochs": 4})
    return miner, hints, centres


@needs_tensorflow
def test_miner_finds_the_bright_spot_of_each_clean_image(tmp_path, caplog):
    from training.mining import MINING_FILE

    miner, hints, centres = _miner_setup(tmp_path)
    with caplog.at_level(logging.INFO, logger="training.mining"):
        miner.on_train_begin()
    assert np.array_equal(hints.numpy(), centres)
    assert miner.last_pass["images"] == 5 and miner.last_pass["alarms"] == 5
    print(f"mining pass: {miner.last_pass}")
    assert "hard-negative mining after epoch 0: 5 clean images in" in caplog.text
    saved = np.load(tmp_path / "checkpoints" / MINING_FILE)
    assert int(saved["epoch"]) == 0 and np.array_equal(saved["hints"], centres)
    # mining_every 2: after the second epoch, not after the first, nor after the run's last
    miner.last_pass = None
    miner.on_epoch_end(0)
    assert miner.last_pass is None
    miner.on_epoch_end(1)
    assert miner.last_pass["epoch"] == 2
    assert int(np.load(tmp_path / "checkpoints" / MINING_FILE)["epoch"]) == 2
    miner.last_pass = None
    miner.on_epoch_end(3)
    assert miner.last_pass is None


@needs_tensorflow
def test_a_resumed_run_takes_the_saved_hints_of_its_epoch(tmp_path, caplog):
    from training.mining import MINING_FILE

    first, _, centres = _miner_setup(tmp_path)
    first.on_train_begin()
    path = tmp_path / "checkpoints" / MINING_FILE
    planted = centres.copy()
    planted[0] = (7, 7)  # marks the saved table apart from what a new pass would find
    np.savez(path, hints=planted, epoch=np.int64(0))
    # resumed at epoch 1 with mining_every 2: the uninterrupted run still cropped with epoch 0's
    resumed, hints, _ = _miner_setup(tmp_path, start_epoch=1)
    resumed.on_train_begin()
    assert resumed.last_pass is None and np.array_equal(hints.numpy(), planted)
    # resumed at epoch 2: the pass due then scores the restored weights, as that run's did
    due, hints, _ = _miner_setup(tmp_path, start_epoch=2)
    with caplog.at_level(logging.WARNING, logger="training.mining"):
        due.on_train_begin()
    assert due.last_pass["epoch"] == 2 and np.array_equal(hints.numpy(), centres)
    assert "mining afresh" not in caplog.text
    # resumed at epoch 5: that run mined after epoch 4; the table of epoch 2 is not it
    later, hints, _ = _miner_setup(tmp_path, start_epoch=5)
    with caplog.at_level(logging.WARNING, logger="training.mining"):
        later.on_train_begin()
    assert later.last_pass["epoch"] == 5 and np.array_equal(hints.numpy(), centres)
    assert "no hints mined after epoch 4, which this run resuming at epoch 5 would use" in caplog.text


def test_passes_take_the_clean_images_in_turns():
    from training.mining import clean_indices, pass_indices

    samples = [Sample(image=str(i), defective=i % 3 == 0) for i in range(10)]
    clean = clean_indices(samples)
    assert clean == [1, 2, 4, 5, 7, 8]
    assert pass_indices(clean, 5) == clean
    assert pass_indices(clean, 0, cap=4) == [1, 2, 4, 5]
    assert pass_indices(clean, 1, cap=4) == [7, 8, 1, 2]


@pytest.mark.parametrize(
    ("input_cfg", "message"),
    [
        ({"hard_negative_fraction": 1.5}, "input.hard_negative_fraction is 1.5; must be between 0 and 1"),
        ({"hard_negative_fraction": -0.1}, "input.hard_negative_fraction is -0.1; must be between 0 and 1"),
        ({"hard_negative_fraction": 0.5, "crop": 0}, "must be 0 when input.crop is 0"),
        ({"mining_every": 0}, "input.mining_every is 0; must be >= 1"),
        ({"mining_every": 1.5}, "input.mining_every must be int, got 1.5"),
    ],
)
def test_bad_mining_keys_name_the_key_and_rule(input_cfg, message):
    import re

    recipe = {"dataset": {"root": "/data"}, "input": {"crop": 64, **input_cfg}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(recipe)


def test_mining_is_off_by_default():
    cfg = load_config({"dataset": {"root": "/data"}})
    assert cfg["input"]["hard_negative_fraction"] == 0.0 and cfg["input"]["mining_every"] == 2


@pytest.mark.slow
def test_training_with_mining_saves_the_hints(dagm_root, tmp_path, caplog):
    from training.datasets import load_splits
    from training.mining import MINING_FILE
    from training.train import train

    recipe = tiny_recipe(dagm_root, tmp_path / "run")
    recipe["input"].update(hard_negative_fraction=0.5, mining_every=1)
    with caplog.at_level(logging.INFO, logger="training.mining"):
        out = train(recipe)
    passes = [r.getMessage() for r in caplog.records if "hard-negative mining after" in r.getMessage()]
    print("\n".join(passes))
    # at the start and after epoch 1; after epoch 2, the last, nothing would use it
    assert len(passes) == 2 and "after epoch 1: 8 clean images" in passes[1]
    saved = np.load(out / "checkpoints" / MINING_FILE)
    assert int(saved["epoch"]) == 1
    train_samples, _ = load_splits(json.loads((out / "recipe.json").read_text()))
    clean = np.array([not s.defective for s in train_samples])
    assert (saved["hints"][clean] >= 0).all() and (saved["hints"][~clean] == -1).all()
    assert (saved["hints"][clean] < 64).all()
