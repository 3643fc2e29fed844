"""Shared fixtures of the training tests: a tiny DAGM-layout data set and one tiny trained run."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path

import pytest

from converter.synthetic import write_dagm
from tests.conftest import import_tensorflow_or_skip


def tiny_recipe(root: Path, out: Path, **train: object) -> dict:
    """A recipe that trains TinyUNet (base 4) on 64x64 synthetic images in seconds."""
    return {
        "name": "test",
        "seed": 3,
        "dataset": {"kind": "dagm", "root": str(root), "classes": [1, 2]},
        "input": {"crop": 32, "batch_size": 4, "cache": True},
        "model": {"architecture": "tinyunet", "base_filters": 4, "batch_norm": True},
        "loss": "bce_dice",
        "optimizer": {"name": "adam", "learning_rate": 0.003, "decay_steps": 0},
        "train": {
            "epochs": 2,
            "steps_per_epoch": 3,
            "output_dir": str(out),
            "progress": False,
            "tensorboard": False,
            **train,
        },
        "eval": {"threshold": 0.5, "min_defect_area": 4},
    }


@pytest.fixture(scope="session")
def dagm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic Class1 and Class2 in the DAGM2007 layout, 64x64, 8 train and 4 test images each."""
    root = tmp_path_factory.mktemp("dagm")
    write_dagm(root, classes=(1, 2), n_train=8, n_test=4, size=64, defect_fraction=0.5, seed=7)
    return root


@pytest.fixture(scope="session")
def trained_run(dagm_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny training run shared by the contract, eval and CLI tests."""
    import_tensorflow_or_skip()
    from training.train import train

    out = tmp_path_factory.mktemp("run") / "tiny"
    return train(tiny_recipe(dagm_root, out))
