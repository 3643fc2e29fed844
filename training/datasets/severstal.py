"""Severstal Steel Defect Detection: ``train.csv`` (ImageId,ClassId,EncodedPixels) and ``train_images/``.

Images are 1600x256 JPEGs. A CSV row marks one defect class present in one image;
images without a row are clean. The model has one output channel, so the mask of
an image is the union of its rows for the selected classes. The older Kaggle
format (``ImageId_ClassId,EncodedPixels``, four rows per image) is read too.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from training.datasets.base import DatasetError, Sample, require_dir, split_train_val
from training.datasets.rle import parse_rle

logger = logging.getLogger(__name__)

HEIGHT, WIDTH = 256, 1600
CLASSES = (1, 2, 3, 4)


def read_severstal_csv(csv_path: str | Path) -> dict[str, dict[int, str]]:
    """ImageId -> {ClassId: EncodedPixels}; checks the header and every run-length field."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        msg = f"Severstal CSV {csv_path} does not exist; dataset.root must hold train.csv and train_images/"
        raise DatasetError(msg)
    rows: dict[str, dict[int, str]] = {}
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        old_format = "ImageId_ClassId" in header
        if not old_format and not {"ImageId", "ClassId", "EncodedPixels"} <= set(header):
            msg = (
                f"{csv_path}: header is {','.join(header) or 'empty'}; expected ImageId,ClassId,EncodedPixels"
            )
            raise DatasetError(msg)
        for lineno, row in enumerate(reader, start=2):
            where = f"{csv_path}:{lineno}"
            if old_format:
                image_id, _, class_text = (row["ImageId_ClassId"] or "").rpartition("_")
            else:
                image_id, class_text = row["ImageId"] or "", row["ClassId"] or ""
            try:
                class_id = int(class_text)
            except ValueError:
                msg = f"{where}: ClassId must be one of {CLASSES}, got {class_text!r}"
                raise DatasetError(msg) from None
            if class_id not in CLASSES or not image_id:
                msg = f"{where}: expected an ImageId and a ClassId in {CLASSES}, got {image_id!r}, {class_id}"
                raise DatasetError(msg)
            encoded = (row.get("EncodedPixels") or "").strip()
            rows.setdefault(image_id, {})
            if encoded:
                parse_rle(encoded, where)
                rows[image_id][class_id] = encoded
    return rows


def load_severstal(
    root: str | Path, classes: list[int] | tuple[int, ...], train_fraction: float = 0.85, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """(train, validation) samples; every image in ``train_images/`` is used, clean ones too."""
    root = require_dir(root, "Severstal root", "it must hold train.csv and train_images/")
    for class_id in classes:
        if class_id not in CLASSES:
            msg = f"Severstal class {class_id} is unknown; dataset.classes allows {list(CLASSES)}"
            raise DatasetError(msg)
    rows = read_severstal_csv(root / "train.csv")
    image_dir = require_dir(
        root / "train_images", "Severstal image folder", "it must hold the JPEGs named in train.csv"
    )
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    on_disk = {p.name for p in images}
    missing = [image_id for image_id in rows if image_id not in on_disk]
    if missing:
        msg = f"{root / 'train.csv'} names {len(missing)} images missing from {image_dir}, e.g. {missing[0]}"
        raise DatasetError(msg)
    samples = []
    for path in images:
        selected = {c: r for c, r in rows.get(path.name, {}).items() if c in classes}
        samples.append(
            Sample(
                image=str(path),
                rle=" ".join(selected[c] for c in sorted(selected)),
                height=HEIGHT,
                width=WIDTH,
                class_id=min(selected) if selected else 0,
                defective=bool(selected),
            )
        )
    logger.info(
        "Severstal: %d images, %d with classes %s", len(samples), sum(s.defective for s in samples), classes
    )
    return split_train_val(samples, train_fraction, seed)
