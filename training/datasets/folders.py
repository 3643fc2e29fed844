"""Plain folders of images and masks with the same stems.

Two layouts: ``images/<stem>.png`` + ``masks/<stem>.png`` under the root, or the
per-id tree ``train/<id>/images/<id>.png`` + ``train/<id>/masks/<id>.png``. A mask
is any 8-bit image whose non-zero pixels are defect; an all-zero mask is a clean image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2

from training.datasets.base import DatasetError, Sample, require_dir, split_train_val

logger = logging.getLogger(__name__)

_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _find_mask(folder: Path, stem: str) -> Path | None:
    for suffix in _SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _pairs_flat(root: Path) -> list[tuple[Path, Path]]:
    image_dir = root / "images"
    mask_dir = require_dir(root / "masks", "mask folder", "put one mask per image, same stem, in masks/")
    pairs = []
    for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _SUFFIXES):
        mask = _find_mask(mask_dir, image.stem)
        if mask is None:
            msg = f"no mask for {image}; expected {mask_dir / (image.stem + '.png')}"
            raise DatasetError(msg)
        pairs.append((image, mask))
    return pairs


def _pairs_per_id(train_dir: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for item in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        image = _find_mask(item / "images", item.name)
        if image is None:
            msg = f"no image for id {item.name}; expected {item / 'images' / (item.name + '.png')}"
            raise DatasetError(msg)
        mask = _find_mask(item / "masks", item.name)
        if mask is None:
            msg = f"no mask for id {item.name}; expected {item / 'masks' / (item.name + '.png')}"
            raise DatasetError(msg)
        pairs.append((image, mask))
    return pairs


def load_folders(
    root: str | Path, train_fraction: float = 0.85, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """(train, validation) samples from either layout; a mask decides whether an image is defective."""
    root = require_dir(root, "image folder root", "it must hold images/ + masks/, or train/<id>/images/")
    if (root / "images").is_dir():
        pairs = _pairs_flat(root)
    elif (root / "train").is_dir():
        pairs = _pairs_per_id(root / "train")
    else:
        msg = (
            f"{root} holds neither images/ + masks/ nor train/<id>/images/<id>.png; use one of these layouts"
        )
        raise DatasetError(msg)
    if not pairs:
        msg = f"{root} holds no images with masks"
        raise DatasetError(msg)
    samples = []
    for image, mask in pairs:
        pixels = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        if pixels is None:
            msg = f"mask {mask} cannot be read as an image; write masks as 8-bit PNG"
            raise DatasetError(msg)
        samples.append(Sample(image=str(image), mask=str(mask), class_id=1, defective=bool(pixels.any())))
    logger.info("folders %s: %d images, %d defective", root, len(samples), sum(s.defective for s in samples))
    return split_train_val(samples, train_fraction, seed)
