"""The tf.data pipelines: normalization constants, crops, augmentation alignment, determinism."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from converter.preprocessing import NORMALIZATIONS
from tests.conftest import needs_tensorflow
from training.config import load_config
from training.datasets import load_dagm

#: the input pipeline is tf.data
pytestmark = needs_tensorflow


@pytest.mark.parametrize("normalization", sorted(NORMALIZATIONS))
def test_eval_pipeline_uses_the_line_side_normalization(dagm_root, normalization):
    from training.pipeline import eval_dataset

    _, test = load_dagm(dagm_root, [1])
    cfg = load_config({"dataset": {"root": str(dagm_root)}, "input": {"normalization": normalization}})
    images, masks, class_ids = next(iter(eval_dataset(test[:2], cfg, batch_size=2)))
    scale, offset = NORMALIZATIONS[normalization]
    raw = cv2.imread(test[0].image, cv2.IMREAD_GRAYSCALE)
    assert np.allclose(images.numpy()[0, ..., 0], raw * np.float32(scale) + np.float32(offset), atol=1e-6)
    assert set(np.unique(masks.numpy())) <= {0.0, 1.0} and list(class_ids.numpy()) == [1, 1]


def _cfg(root, **input_cfg):
    return load_config(
        {
            "dataset": {"root": str(root)},
            "input": {"batch_size": 4, **input_cfg},
            "train": {"epochs": 2, "steps_per_epoch": 2},
        }
    )


def test_train_batches_are_deterministic_per_seed_and_epoch(dagm_root):
    from training.pipeline import train_dataset

    train, _ = load_dagm(dagm_root, [1, 2])
    cfg = _cfg(dagm_root, crop=32)
    first = [x.numpy() for x, _ in train_dataset(train, cfg, seed=1)]
    again = [x.numpy() for x, _ in train_dataset(train, cfg, seed=1)]
    other = [x.numpy() for x, _ in train_dataset(train, cfg, seed=2)]
    assert len(first) == 4 and first[0].shape == (4, 32, 32, 1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    # a run resumed at epoch 1 sees what the uninterrupted run saw in epoch 1
    resumed = [x.numpy() for x, _ in train_dataset(train, cfg, seed=1, start_epoch=1, epochs=1)]
    assert all(np.array_equal(a, b) for a, b in zip(first[2:], resumed, strict=True))


def test_augmentation_keeps_masks_aligned(tmp_path):
    """Images whose mask is exactly their bright pixels stay so after crops, flips and rotations."""
    from training.datasets import load_folders
    from training.pipeline import train_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        image = np.full((48, 48), 60, np.uint8)
        x, y = rng.integers(0, 40, 2)
        image[y : y + 12, x : x + 5] = 200  # an asymmetric bar, so a flip or rotation of one side shows
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), image)
        cv2.imwrite(str(tmp_path / "masks" / f"{i}.png"), (image > 100).astype(np.uint8) * 255)
    samples, _ = load_folders(tmp_path, train_fraction=1.0)
    cfg = load_config(
        {
            "dataset": {"kind": "folders", "root": str(tmp_path)},
            "input": {"crop": 32, "batch_size": 4, "augment": {"brightness": 0.0, "contrast": 0.0}},
            "train": {"epochs": 1, "steps_per_epoch": 4},
        }
    )
    n_defect = 0
    for images, masks in train_dataset(samples, cfg, seed=0):
        bright = images.numpy() > 0.5
        assert np.array_equal(bright, masks.numpy() > 0.5)
        n_defect += int(masks.numpy().any(axis=(1, 2, 3)).sum())
    assert n_defect >= 8  # defect-centred crops: most crops hold the bar


def test_augmentation_changes_brightness_and_contrast(dagm_root):
    from training.pipeline import train_dataset

    train, _ = load_dagm(dagm_root, [1])
    plain = _cfg(
        dagm_root, crop=32, augment={"flip": False, "rot90": False, "brightness": 0.0, "contrast": 0.0}
    )
    jitter = _cfg(
        dagm_root, crop=32, augment={"flip": False, "rot90": False, "brightness": 0.3, "contrast": 0.3}
    )
    a = next(iter(train_dataset(train, plain, seed=4)))[0].numpy()
    b = next(iter(train_dataset(train, jitter, seed=4)))[0].numpy()
    assert a.shape == b.shape and not np.allclose(a, b)
    assert b.min() >= 0.0 and b.max() <= 1.0


CAMERA = {
    "rotate": 10.0,
    "scale": 0.1,
    "blur": 2.0,
    "gamma": 0.3,
    "noise": 6.0,
    "stuck_pixels": 0.01,
    "gain": 0.3,
}
NO_JITTER = {"flip": False, "rot90": False, "brightness": 0.0, "contrast": 0.0}


def test_camera_augmentation_keeps_masks_on_their_defects():
    """Rotation, scale, blur, gamma and noise: the mask stays binary and on the bright bar it
    labels, the image changes, and each kind is off at 0 (then the crop is left as it was)."""
    import tensorflow as tf

    from training.pipeline import _augment

    image = np.full((64, 64, 1), 60, np.float32)
    image[20:44, 28:36] = 200
    mask = (image > 100).astype(np.uint8)
    off = {**NO_JITTER, **dict.fromkeys(CAMERA, 0.0)}
    a, m = _augment(tf.constant(image), tf.constant(mask), off, tf.constant([3, 4], tf.int64), True)
    assert np.array_equal(a.numpy(), image) and np.array_equal(m.numpy(), mask)
    turned = 0
    for i in range(8):
        seed = tf.constant([3, i], tf.int64)
        a, m = (
            t.numpy()
            for t in _augment(tf.constant(image), tf.constant(mask), {**NO_JITTER, **CAMERA}, seed, True)
        )
        assert set(np.unique(m)) <= {0, 1} and 0.7 * mask.sum() < m.sum() < 1.3 * mask.sum()
        # the bar and its label moved together: inside the label the image is bright, outside dark
        assert a[m[..., 0] > 0].mean() > 150 and a[m[..., 0] == 0].mean() < 100
        assert a.min() >= 0.0 and a.max() <= 255.0 and not np.allclose(a, image)
        turned += not np.array_equal(m, mask)
    assert turned >= 6  # rotation and scale move the label itself


def test_camera_augmentation_each_kind_acts():
    import tensorflow as tf

    from training.pipeline import _augment

    rng = np.random.default_rng(5)
    image = rng.integers(40, 220, (48, 48, 1)).astype(np.float32)
    mask = np.zeros((48, 48, 1), np.uint8)
    off = {**NO_JITTER, **dict.fromkeys(CAMERA, 0.0)}

    def changed(kind: str, value: float, i: int) -> bool:
        seed = tf.constant([7, i], tf.int64)
        out = _augment(tf.constant(image), tf.constant(mask), {**off, kind: value}, seed, True)[0]
        return not np.allclose(out.numpy(), image)

    outputs = {kind: sum(changed(kind, value, i) for i in range(4)) for kind, value in CAMERA.items()}
    # blur acts on half the crops; the others on every crop (a draw of exactly 0 aside)
    assert outputs["blur"] >= 1 and all(
        outputs[k] >= 3 for k in ("rotate", "scale", "gamma", "noise", "stuck_pixels", "gain")
    ), outputs


def test_blur_is_a_defocus_of_sigma_up_to_the_setting_on_half_the_crops():
    """input.augment.blur (the recipe's defocus): each crop is either left exactly as it was or
    blurred by a Gaussian whose sigma is at most the setting, about half the crops each way. A
    single bright pixel shows the kernel: the light it had is kept (no darkening), spread
    symmetrically, with a spread (second moment) of at most the setting; the label is untouched."""
    import tensorflow as tf

    from training.pipeline import _augment

    image = np.zeros((41, 41, 1), np.float32)
    image[20, 20] = 255.0
    mask = np.zeros((41, 41, 1), np.uint8)
    mask[18:23, 18:23] = 1
    aug = {**NO_JITTER, **dict.fromkeys(CAMERA, 0.0), "blur": 2.0}
    rows = np.arange(41) - 20  # each row's distance from the bright pixel
    sharp, sigmas = 0, []
    for i in range(40):
        a, m = (
            t.numpy()[..., 0]
            for t in _augment(tf.constant(image), tf.constant(mask), aug, tf.constant([9, i], tf.int64), True)
        )
        assert np.array_equal(m, mask[..., 0])
        if np.array_equal(a, image[..., 0]):
            sharp += 1
            continue
        assert a.sum() == pytest.approx(255.0, rel=1e-4) and np.allclose(a, a[::-1, ::-1], atol=1e-3)
        sigmas.append(float(np.sqrt((a.sum(axis=1) * rows**2).sum() / a.sum())))
    assert 10 <= sharp <= 30, sharp  # about half stay in focus
    assert max(sigmas) <= 2.0 + 1e-3 and max(sigmas) > 1.0, sigmas  # up to the setting, and well into it


def test_stuck_pixels_are_hot_or_dead_and_leave_the_mask_and_the_other_draws_alone():
    """A camera's stuck pixels: single pixels at 255 or 0, up to the share asked, the label
    untouched (they are the camera's, not the part's), and every other pixel as the same crop
    without them got it, so turning them on changes no other draw of a recipe."""
    import tensorflow as tf

    from training.pipeline import _augment

    image = np.full((200, 200, 1), 120, np.float32)
    mask = np.zeros((200, 200, 1), np.uint8)
    mask[50:80, 60:90] = 1
    noisy = {**NO_JITTER, **dict.fromkeys(CAMERA, 0.0), "noise": 4.0}
    shares = []
    for i in range(6):
        seed = tf.constant([5, i], tf.int64)
        plain, _ = _augment(tf.constant(image), tf.constant(mask), noisy, seed, True)
        stuck, m = _augment(
            tf.constant(image), tf.constant(mask), {**noisy, "stuck_pixels": 0.01}, seed, True
        )
        plain, stuck = plain.numpy(), stuck.numpy()
        changed = plain != stuck
        assert np.array_equal(m.numpy(), mask)
        assert set(np.unique(stuck[changed])) <= {0.0, 255.0}
        assert np.array_equal(stuck[~changed], plain[~changed])
        shares.append(changed.mean())
    # a share drawn up to 1 % per crop: some crops near none, none above the top
    assert max(shares) <= 0.012 and sum(shares) > 0.01, shares


def test_gain_saturates_bright_texture_to_flat_white_and_leaves_the_other_draws_alone():
    """More light or gain on the line: the crop is scaled about black, up on some crops and
    down on others, and what goes past 255 is clipped to exactly 255 (flat white, as a sensor
    gives), the label untouched; off, the crop and every other draw are what they were."""
    import tensorflow as tf

    from training.pipeline import _augment

    rng = np.random.default_rng(3)
    image = rng.integers(150, 240, (64, 64, 1)).astype(np.float32)
    mask = np.zeros((64, 64, 1), np.uint8)
    mask[10:20, 10:30] = 1
    noisy = {**NO_JITTER, **dict.fromkeys(CAMERA, 0.0), "noise": 3.0}
    brighter = darker = 0
    for i in range(12):
        seed = tf.constant([9, i], tf.int64)
        plain, _ = _augment(tf.constant(image), tf.constant(mask), noisy, seed, True)
        lit, m = _augment(tf.constant(image), tf.constant(mask), {**noisy, "gain": 0.4}, seed, True)
        plain, lit = plain.numpy(), lit.numpy()
        assert np.array_equal(m.numpy(), mask)
        below = lit < 255.0
        factor = np.median(lit[below] / plain[below])
        assert 1 / 1.4 - 1e-3 <= factor <= 1.4 + 1e-3
        if factor > 1.1:
            brighter += 1
            # every pixel that the factor takes past white is exactly white, the rest scaled
            over = plain * factor >= 255.0
            assert over.any() and np.all(lit[over] == 255.0)
            assert np.allclose(lit[~over], plain[~over] * factor, rtol=1e-4)
        elif factor < 0.9:
            darker += 1
            assert lit.max() < 255.0 * 0.91
    assert brighter >= 2 and darker >= 2, (brighter, darker)


def test_random_crops_reach_every_image_edge():
    """Whole images have edges; training crops must show them (edge false alarms otherwise)."""
    import tensorflow as tf

    from training.pipeline import _crop

    # pixel values encode their own position, so a crop's first pixel gives its offset
    image = tf.reshape(tf.range(512 * 512, dtype=tf.int32), [512, 512, 1])
    mask = tf.zeros([512, 512, 1], tf.uint8)
    offsets = []
    for i in range(1000):
        crop, _ = _crop(image, mask, 160, 0.0, tf.constant([3, i], tf.int64))
        assert crop.shape == (160, 160, 1)
        offsets.append(divmod(int(crop[0, 0, 0]), 512))
    tops, lefts = np.array(offsets).T
    assert tops.min() == 0 and lefts.min() == 0 and tops.max() == 352 and lefts.max() == 352
    for edge in (tops == 0, tops == 352, lefts == 0, lefts == 352):
        # about 1 in 10 (uniform offsets would give 1 in 353)
        assert 0.04 < edge.mean() < 0.2
    # and the rest still cover the inside
    assert len(set(tops.tolist())) > 250
