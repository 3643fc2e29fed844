"""Data set loaders: DAGM2007, Severstal, plain folders and the synthetic DAGM-like set.

``load_splits(cfg)`` picks the loader named by ``dataset.kind`` and returns
(train, validation) lists of ``Sample``; nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from training.datasets.base import DatasetError, Sample, split_train_val
from training.datasets.dagm import LabelsTxtError, load_dagm, load_dagm_split
from training.datasets.folders import load_folders
from training.datasets.severstal import load_severstal

__all__ = [
    "DatasetError",
    "LabelsTxtError",
    "Sample",
    "ensure_synthetic",
    "load_dagm",
    "load_dagm_split",
    "load_folders",
    "load_severstal",
    "load_splits",
    "split_train_val",
]

SYNTHETIC_MARKER = "synthetic.json"


def _synthetic_settings(classes: list[int], params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Everything that decides a synthetic set's images, the generator's version included."""
    from converter.synthetic import GENERATOR_VERSION

    return {"generator": GENERATOR_VERSION, "classes": list(classes), "seed": seed, **params}


def ensure_synthetic(root: str | Path, classes: list[int], params: dict[str, Any], seed: int) -> Path:
    """Write the synthetic DAGM-like set under ``root`` unless the same one is already there."""
    from converter.synthetic import write_dagm

    wanted = _synthetic_settings(classes, params, seed)
    root = Path(root)
    marker = root / SYNTHETIC_MARKER
    if marker.is_file():
        if json.loads(marker.read_text()) == wanted:
            return root
        msg = (
            f"{root} holds a synthetic set made with other settings or an older generator ({marker}); "
            "delete that folder or choose another dataset.root"
        )
        raise DatasetError(msg)
    if root.exists() and any(root.iterdir()):
        msg = f"{root} is not empty and holds no {SYNTHETIC_MARKER}; choose an empty dataset.root"
        raise DatasetError(msg)
    write_dagm(root, classes=classes, seed=seed, **params)
    marker.write_text(json.dumps(wanted, indent=2) + "\n")
    return root


def default_synthetic_root(classes: list[int], params: dict[str, Any], seed: int) -> Path:
    """A cache folder named after the generator settings, so equal settings reuse one set."""
    key = json.dumps(_synthetic_settings(classes, params, seed), sort_keys=True)
    return Path("runs") / "data" / f"synthetic-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def load_splits(cfg: dict[str, Any]) -> tuple[list[Sample], list[Sample]]:
    """(train, validation) samples for a validated recipe; fills ``dataset.root`` for synthetic sets."""
    ds = cfg["dataset"]
    kind = ds["kind"]
    if kind == "synthetic":
        params = dict(ds["synthetic"])
        root = ds["root"] or str(default_synthetic_root(ds["classes"], params, cfg["seed"]))
        ds["root"] = str(ensure_synthetic(root, ds["classes"], params, cfg["seed"]))
        return load_dagm(ds["root"], ds["classes"], ds["only_defective_images"], ds["lenient"])
    if kind == "dagm":
        return load_dagm(ds["root"], ds["classes"], ds["only_defective_images"], ds["lenient"])
    if kind == "severstal":
        return load_severstal(ds["root"], ds["classes"], ds["train_fraction"], cfg["seed"])
    if kind == "folders":
        return load_folders(ds["root"], ds["train_fraction"], cfg["seed"])
    msg = f"dataset.kind {kind!r} is unknown; allowed: dagm, severstal, folders, synthetic"
    raise DatasetError(msg)
