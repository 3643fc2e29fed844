"""Fixtures for the converter tests: a small defect data set, a tiny UNet trained on it
for real, and its exported model package. TensorFlow is imported only by the fixtures
that need it, so the plain-Python tests run without it.

``gpu`` tests are skipped with the reason by tests/conftest.py (no TensorRT, pycuda or GPU).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import import_tensorflow_or_skip

SIZE = 64


def write_defect_dataset(root: Path, count: int = 48, size: int = SIZE, seed: int = 0) -> Path:
    """images/ + masks/ of textured backgrounds; every other image has a dark elliptic defect."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        base = rng.normal(150, 12, (size // 4, size // 4)).astype(np.float32)
        image = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 6, (size, size))
        mask = np.zeros((size, size), np.uint8)
        if i % 2 == 0:
            center = tuple(int(v) for v in rng.integers(12, size - 12, 2))
            axes = (int(rng.integers(4, 10)), int(rng.integers(3, 7)))
            cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
            image[mask > 0] -= 70
        cv2.imwrite(str(root / "images" / f"{i:04d}.png"), np.clip(image, 0, 255).astype(np.uint8))
        if mask.any():
            cv2.imwrite(str(root / "masks" / f"{i:04d}.png"), mask)
    return root


def build_unet(size: int | None = SIZE):
    """A tiny UNet: two convs, pool, conv, upsample, skip, conv, sigmoid (NHWC, 1 channel)."""
    import_tensorflow_or_skip()
    import keras

    inp = keras.Input((size, size, 1), name="image")
    c1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    c2 = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(c1)
    p = keras.layers.MaxPooling2D(name="pool")(c2)
    c3 = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c3")(p)
    u = keras.layers.UpSampling2D(name="up")(c3)
    x = keras.layers.Concatenate(name="skip")([u, c2])
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c4")(x)
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="head")(x)
    return keras.Model(inp, out, name="tinyunet")


def recipe_model(**model):
    """The Keras model that ``lineside train`` builds for a recipe's ``model:`` section (the
    options checked and defaulted as a recipe's are); skips where TensorFlow is absent."""
    import_tensorflow_or_skip()
    from training.config import load_config
    from training.models import build_model

    return build_model(load_config({"dataset": {"root": "x"}, "model": model})["model"])


def write_checkpoint(model, folder: Path, size: int = SIZE, data_root: str = "", **extra) -> Path:
    """A checkpoint folder in the layout `lineside train` writes."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    training = {
        "architecture": "tinyunet",
        "input": {"height": size, "width": size, "channels": 1},
        "normalization": "zero_one",
        "threshold": 0.5,
        "min_defect_area": 16,
        "dataset": {"kind": "folders", "root": data_root, "classes": []},
        "metrics": {"dice": 0.0},
        "seed": 0,
        "model_file": "model.keras",
        "epochs_done": 0,
    }
    training.update(extra)
    (folder / "training.json").write_text(json.dumps(training))
    return folder


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return write_defect_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, dataset) -> Path:
    """A tiny UNet trained on ``dataset`` until it finds the defects (seconds on 2 cores)."""
    import_tensorflow_or_skip()
    import keras

    from converter.preprocessing import normalize
    from converter.samples import load_samples

    keras.utils.set_random_seed(0)
    samples = load_samples(dataset, SIZE, SIZE, 1, limit=None)
    x = normalize(samples.images, "zero_one")
    y = samples.masks[..., None].astype(np.float32)
    model = build_unet()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.fit(x, y, batch_size=8, epochs=40, verbose=0)
    pred = model.predict(x, verbose=0)[..., 0] > 0.5
    inter = np.logical_and(pred, samples.masks).sum()
    dice = 2 * inter / max(pred.sum() + samples.masks.sum(), 1)
    folder = write_checkpoint(
        model,
        tmp_path_factory.mktemp("ckpt"),
        data_root=str(dataset),
        metrics={"dice": float(dice)},
        recipe="tiny",  # the package's model id (converter.checkpoint.run_name)
    )
    return folder


@pytest.fixture(scope="session")
def fp32_package(tmp_path_factory, trained_checkpoint, dataset):
    """The trained checkpoint exported once (FP32 only) for the tests that read a package."""
    from converter.export import export_package

    return export_package(trained_checkpoint, tmp_path_factory.mktemp("pkg") / "tiny", data_dir=dataset)


@pytest.fixture
def package_copy(tmp_path, fp32_package):
    """A private copy of the exported package that a test may modify."""
    from converter.package import ModelPackage

    target = tmp_path / "pkg"
    shutil.copytree(fp32_package.root, target)
    return ModelPackage.open(target)
