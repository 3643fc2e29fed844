"""Validation and calibration images for the converter, read without TensorFlow.

The gates (FP16, INT8, engine ``--verify``) and INT8 calibration need real images
from the data set the model was trained on. Two layouts are read:

- DAGM2007: ``ClassN/Test/*.PNG`` with masks in ``ClassN/Test/Label/NNNN_label.PNG``
  (only defective images have a label; the others get an empty mask). ``root`` may
  be the data set root (then ``classes`` picks the ``ClassN`` folders) or one ``ClassN``.
- plain folders: ``images/*`` and ``masks/*`` matched by file stem (a mask may carry a
  ``_label`` or ``_mask`` suffix).

Images are resized to the model input with the same OpenCV call the line uses, so
what the gate sees is what the line sees.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from converter.errors import LinesideError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = ("", "_label", "_mask")


class SampleError(LinesideError, ValueError):
    """A data set folder is missing, empty or in a layout this reader does not know."""


@dataclass
class Samples:
    """A batch of images shaped for the model, with their ground-truth masks if known."""

    #: uint8, (N, H, W, C)
    images: np.ndarray
    #: bool, (N, H, W); all False where the data set has no label for an image
    masks: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _dagm_pairs(class_dir: Path, split: str) -> list[tuple[Path, Path | None]]:
    split_dir = class_dir / split
    if not split_dir.is_dir():
        return []
    label_dir = split_dir / "Label"
    pairs = []
    for image in _image_files(split_dir):
        label = label_dir / f"{image.stem}_label{image.suffix}"
        pairs.append((image, label if label.is_file() else None))
    return pairs


def _plain_pairs(root: Path) -> list[tuple[Path, Path | None]]:
    masks_dir = root / "masks"
    masks = {}
    if masks_dir.is_dir():
        for mask in _image_files(masks_dir):
            masks[mask.stem] = mask
    pairs = []
    for image in _image_files(root / "images"):
        found = next((masks[image.stem + s] for s in MASK_SUFFIXES if image.stem + s in masks), None)
        pairs.append((image, found))
    return pairs


def find_pairs(
    root: str | Path, classes: Iterable[int] | None = None, split: str = "Test"
) -> list[tuple[Path, Path | None]]:
    """Every (image, mask-or-None) pair of a data set folder, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        msg = f"{root}: data set folder not found; pass --data with a DAGM2007 or images/+masks/ folder"
        raise SampleError(msg)
    if (root / "images").is_dir():
        pairs = _plain_pairs(root)
    elif (root / split).is_dir():
        pairs = _dagm_pairs(root, split)
    else:
        wanted = [f"Class{c}" for c in classes] if classes else None
        class_dirs = sorted(p for p in root.glob("Class*") if p.is_dir())
        if wanted is not None:
            class_dirs = [p for p in class_dirs if p.name in wanted]
        pairs = [pair for d in class_dirs for pair in _dagm_pairs(d, split)]
        if not pairs and split == "Test":  # some copies keep only Train/
            pairs = [pair for d in class_dirs for pair in _dagm_pairs(d, "Train")]
    if not pairs:
        msg = (
            f"{root}: no images found; expected DAGM2007 (ClassN/{split}/*.PNG) "
            "or plain images/ + masks/ folders"
        )
        raise SampleError(msg)
    return pairs


def _spread(pairs: list[tuple[Path, Path | None]], limit: int | None) -> list[tuple[Path, Path | None]]:
    """Pick up to ``limit`` pairs, alternating defective and clean ones.

    A gate that only saw clean images would report a perfect Dice on empty masks;
    alternating makes sure the defects are there to be compared.
    """
    if limit is None or limit >= len(pairs):
        return pairs
    labelled = [p for p in pairs if p[1] is not None]
    clean = [p for p in pairs if p[1] is None]
    picked: list[tuple[Path, Path | None]] = []
    while len(picked) < limit and (labelled or clean):
        for source in (labelled, clean):
            if source and len(picked) < limit:
                picked.append(source.pop(0))
    return picked


def read_image(path: Path, height: int, width: int, channels: int) -> np.ndarray:
    """One image file -> uint8 (H, W, C) at the model's size."""
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        msg = f"{path}: OpenCV cannot read this image; remove it or convert it to PNG"
        raise SampleError(msg)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image[..., None] if channels == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path | None, height: int, width: int) -> np.ndarray:
    """A mask file (any non-zero pixel is a defect) -> bool (H, W); None -> empty mask."""
    if path is None:
        return np.zeros((height, width), dtype=bool)
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        msg = f"{path}: OpenCV cannot read this mask; remove it or convert it to PNG"
        raise SampleError(msg)
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return mask > 0


def load_samples(
    root: str | Path,
    height: int,
    width: int,
    channels: int = 1,
    limit: int | None = 32,
    classes: Iterable[int] | None = None,
) -> Samples:
    """Read up to ``limit`` images (and masks) of a data set, shaped for the model."""
    pairs = _spread(find_pairs(root, classes), limit)
    images = np.stack([read_image(img, height, width, channels) for img, _ in pairs])
    masks = np.stack([read_mask(mask, height, width) for _, mask in pairs])
    log.debug(
        "read %d samples from %s (%d with a defect label)", len(pairs), root, int(masks.any((1, 2)).sum())
    )
    return Samples(images=images, masks=masks, names=[img.name for img, _ in pairs])


def load_gate_and_calibration(
    root: str | Path,
    height: int,
    width: int,
    channels: int,
    gate: int,
    calibration: int = 0,
    classes: Iterable[int] | None = None,
) -> tuple[Samples, Samples | None]:
    """Two disjoint sets from one data set: gate images and (optionally) INT8 calibration images.

    Images are dealt two at a time (one defective, one clean, see _spread), so both
    sets hold defective and clean images.
    """
    pairs = _spread(find_pairs(root, classes), gate + calibration)
    if calibration and len(pairs) < 2:
        msg = f"{root}: INT8 needs at least 2 images (gate + calibration), found {len(pairs)}"
        raise SampleError(msg)
    if calibration:
        gate_pairs = [p for i, p in enumerate(pairs) if (i // 2) % 2 == 0][:gate]
        calib_pairs = [p for p in pairs if p not in gate_pairs][:calibration]
    else:
        gate_pairs, calib_pairs = pairs[:gate], []

    def read(chosen: list[tuple[Path, Path | None]]) -> Samples:
        images = np.stack([read_image(img, height, width, channels) for img, _ in chosen])
        masks = np.stack([read_mask(mask, height, width) for _, mask in chosen])
        return Samples(images=images, masks=masks, names=[img.name for img, _ in chosen])

    return read(gate_pairs), (read(calib_pairs) if calib_pairs else None)


def package_gate_sets(
    package, data_dir: str | Path | None, gate: int, calibration: int = 0
) -> tuple[Samples, Samples | None, str]:
    """``load_gate_and_calibration`` for a model package: its input size and classes, from
    ``data_dir`` or else the data set its manifest names; the folder comes back too."""
    m = package.manifest
    data_dir = data_dir or m.dataset.get("root")
    if not data_dir:
        msg = f"{package.root}: the gates need validation images; pass --data DATASET_DIR"
        raise SampleError(msg)
    gate_set, calib_set = load_gate_and_calibration(
        data_dir,
        m.input.height,
        m.input.width,
        m.input.channels,
        gate=gate,
        calibration=calibration,
        classes=m.dataset.get("classes"),
    )
    return gate_set, calib_set, str(data_dir)
