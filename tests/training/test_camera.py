"""What real cameras add (training/camera.py), which ``lineside eval RUN --camera`` puts on the
test images; the evaluation itself is tested in test_evaluate.py."""

from __future__ import annotations

import numpy as np
import pytest

from training.camera import ARTIFACTS, defocus, dust, gain, jpeg, sensor_noise, stuck_pixels


def _texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(120 + 20 * rng.standard_normal((128, 128)), 0, 255).round().astype(np.uint8)


def test_each_artifact_does_what_its_name_says_and_draws_the_same_for_the_same_seed():
    image = _texture()
    for name, artifact in ARTIFACTS.items():
        a = artifact(image, np.random.default_rng([0, 5]))
        b = artifact(image, np.random.default_rng([0, 5]))
        assert a.dtype == np.uint8 and a.shape == image.shape and np.array_equal(a, b), name
        assert not np.array_equal(a, image), name
    # stuck pixels: 1 in 10,000 (2 at least), half hot, half dead, nothing else touched
    flat = np.full((200, 200), 100, np.uint8)
    stuck = stuck_pixels(flat, np.random.default_rng(1))
    assert (stuck == 255).sum() == 2 and (stuck == 0).sum() == 2 and (stuck != 100).sum() == 4
    # sensor noise of sigma 8 gray levels on a flat gray
    noisy = sensor_noise(flat, np.random.default_rng(2)).astype(np.float64)
    assert noisy.std() == pytest.approx(8, abs=0.3) and noisy.mean() == pytest.approx(100, abs=0.2)
    # dust only darkens, by up to half at a speck's centre, and only near its specks
    dusty = dust(flat, np.random.default_rng(3))
    assert dusty.max() <= 100 and 50 <= dusty.min() <= 75 and (dusty < 100).mean() < 0.05
    # JPEG at quality 40 keeps the picture and loses detail; defocus smooths it
    compressed = jpeg(image, np.random.default_rng(4)).astype(np.float64)
    assert abs(compressed.mean() - image.mean()) < 1 and compressed.std() < 0.9 * image.std()
    assert np.corrcoef(compressed.ravel(), image.ravel())[0, 1] > 0.5
    assert defocus(image, np.random.default_rng(5)).std() < 0.5 * image.std()
    assert gain(flat, np.random.default_rng(6)).max() == 140
