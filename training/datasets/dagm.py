"""DAGM2007 as distributed: ``ClassN/{Train,Test}/NNNN.PNG`` and ``Label/NNNN_label.PNG``.

A label file exists only for defective images. ``Label/Labels.txt`` is optional;
when present it must agree with the label files (it is how DAGM says which
images are defective), and a label it names that is missing is an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.datasets.base import DatasetError, Sample, require_dir

logger = logging.getLogger(__name__)

SPLITS = ("Train", "Test")
_IMAGE_SUFFIXES = (".png", ".PNG")


def _read_labels_txt(path: Path) -> dict[str, str]:
    """image file name -> label file name ('' for clean images)."""
    entries: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if len(fields) < 5:
            continue  # DAGM's first line holds a single number
        if fields[1] not in ("0", "1"):
            msg = f"{path}:{lineno}: defective flag must be 0 or 1, got {fields[1]!r}"
            raise DatasetError(msg)
        entries[fields[2]] = fields[4] if fields[1] == "1" else ""
    return entries


def load_dagm_split(root: str | Path, class_id: int, split: str) -> list[Sample]:
    """All images of one class and split, with their label path when defective."""
    if split not in SPLITS:
        msg = f"DAGM split {split!r} is unknown; allowed: {', '.join(SPLITS)}"
        raise DatasetError(msg)
    root = require_dir(root, "DAGM root", "point dataset.root at the folder that holds Class1..Class10")
    class_dir = root / f"Class{class_id}"
    if not class_dir.is_dir():
        found = sorted(p.name for p in root.glob("Class*") if p.is_dir())
        msg = f"DAGM class folder {class_dir} does not exist; found: {', '.join(found) or 'none'}"
        raise DatasetError(msg)
    split_dir = require_dir(
        class_dir / split, "DAGM split folder", "DAGM has Train/ and Test/ in every ClassN"
    )
    label_dir = split_dir / "Label"
    images = sorted(p for p in split_dir.iterdir() if p.suffix in _IMAGE_SUFFIXES and p.is_file())
    if not images:
        msg = f"DAGM split folder {split_dir} holds no .PNG images"
        raise DatasetError(msg)
    listed = _read_labels_txt(label_dir / "Labels.txt") if (label_dir / "Labels.txt").is_file() else None
    samples = []
    for image in images:
        label = label_dir / f"{image.stem}_label{image.suffix}"
        if not label.is_file():
            label = label_dir / f"{image.stem}_label.PNG"
        if listed is not None and listed.get(image.name):
            label = label_dir / listed[image.name]
            if not label.is_file():
                msg = (
                    f"{label_dir / 'Labels.txt'} names {label.name} for {image.name}, but {label} is missing"
                )
                raise DatasetError(msg)
        defective = label.is_file()
        samples.append(
            Sample(
                image=str(image), mask=str(label) if defective else "", class_id=class_id, defective=defective
            )
        )
    logger.debug(
        "DAGM Class%d/%s: %d images, %d defective",
        class_id,
        split,
        len(samples),
        sum(s.defective for s in samples),
    )
    return samples


def load_dagm(
    root: str | Path, classes: list[int] | tuple[int, ...], only_defective_images: bool = False
) -> tuple[list[Sample], list[Sample]]:
    """(train, test) samples of the selected classes; ``only_defective_images`` filters training only."""
    train: list[Sample] = []
    test: list[Sample] = []
    for class_id in classes:
        train += load_dagm_split(root, class_id, "Train")
        test += load_dagm_split(root, class_id, "Test")
    if only_defective_images:
        train = [s for s in train if s.defective]
    return train, test
