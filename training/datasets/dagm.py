"""DAGM2007 as distributed: ``ClassN/{Train,Test}/NNNN.PNG`` and ``Label/NNNN_label.PNG``.

A label file exists only for defective images. ``Label/Labels.txt`` is optional;
when present it must agree with the files (it is how DAGM says which images are
defective): a line naming an image or a label that does not exist, or marking an
image clean that has a label file, is a ``LabelsTxtError`` naming the line and the
file. ``lenient`` (``--lenient``, ``dataset.lenient``) logs a warning per problem instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from training.datasets.base import DatasetError, Sample, require_dir

logger = logging.getLogger(__name__)

SPLITS = ("Train", "Test")
_IMAGE_SUFFIXES = (".png", ".PNG")


class LabelsTxtError(DatasetError):
    """``Label/Labels.txt`` and the files of a DAGM split disagree; ``--lenient`` warns instead."""


#: how to get past a Labels.txt that disagrees with the files
LENIENT_FIX = "fix that line or the file, or pass --lenient (dataset.lenient: true) to warn and go on"
#: lenient mode warns once per problem up to this many per Labels.txt, then sums up the rest
MAX_WARNINGS = 5


@dataclass(frozen=True)
class _Listed:
    """One image line of Labels.txt: where it is, and the label it names ('' for a clean image)."""

    lineno: int
    label: str


def _read_labels_txt(path: Path) -> dict[str, _Listed]:
    """image file name -> its Labels.txt line number and label file name ('' for clean images)."""
    entries: dict[str, _Listed] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if len(fields) < 5:
            continue  # DAGM's first line holds a single number
        if fields[1] not in ("0", "1"):
            msg = f"{path}:{lineno}: defective flag must be 0 or 1, got {fields[1]!r}"
            raise DatasetError(msg)
        entries[fields[2]] = _Listed(lineno, fields[4] if fields[1] == "1" else "")
    return entries


def _default_label(label_dir: Path, image: Path) -> Path:
    """The label file DAGM names after an image: ``NNNN_label.PNG`` (suffix as the image's, or .PNG)."""
    label = label_dir / f"{image.stem}_label{image.suffix}"
    return label if label.is_file() else label_dir / f"{image.stem}_label.PNG"


def _check_listing(
    labels_txt: Path, listed: dict[str, _Listed], split_dir: Path, on_disk: set[str]
) -> tuple[list[str], set[str]]:
    """Where Labels.txt and the files disagree: one message per problem, and the images to leave out.

    A line marking an image clean while its label file exists keeps the label (a drawn
    defect is more evidence than a flag); a defective line whose label is missing leaves
    its image out, since training it as clean would teach the model its defect is normal.
    """
    label_dir = labels_txt.parent
    problems: list[str] = []
    left_out: set[str] = set()
    for name, entry in sorted(listed.items(), key=lambda item: item[1].lineno):
        where = f"{labels_txt}:{entry.lineno}"
        if name not in on_disk:
            problems.append(f"{where} lists {name}, but {split_dir / name} does not exist")
        elif entry.label and not (label_dir / entry.label).is_file():
            problems.append(
                f"{where} names {entry.label} for {name}, but {label_dir / entry.label} is missing "
                "(image left out)"
            )
            left_out.add(name)
        elif not entry.label and _default_label(label_dir, split_dir / name).is_file():
            label = _default_label(label_dir, split_dir / name)
            problems.append(f"{where} says {name} is clean, but its label file {label} exists (label used)")
    return problems, left_out


def _report(labels_txt: Path, problems: list[str], lenient: bool) -> None:
    """Raise the first problem as one line, or (lenient) warn once per problem and sum up the rest."""
    if not problems:
        return
    if not lenient:
        more = f" ({len(problems) - 1} more in this Labels.txt)" if len(problems) > 1 else ""
        msg = f"{problems[0]}{more}; {LENIENT_FIX}"
        raise LabelsTxtError(msg)
    for problem in problems[:MAX_WARNINGS]:
        logger.warning("%s", problem)
    if len(problems) > MAX_WARNINGS:
        logger.warning(
            "%s: %d more disagreements with the files (%d in all), not listed one by one",
            labels_txt,
            len(problems) - MAX_WARNINGS,
            len(problems),
        )


def _class_number(name: str) -> tuple[int, str]:
    """Sort key that puts Class10 after Class9."""
    digits = name.removeprefix("Class")
    return (int(digits) if digits.isdigit() else 1 << 30, name)


def load_dagm_split(root: str | Path, class_id: int, split: str, lenient: bool = False) -> list[Sample]:
    """All images of one class and split, with their label path when defective.

    Where ``Label/Labels.txt`` disagrees with the files, raise a ``LabelsTxtError``, or with
    ``lenient`` log a warning per problem and go on.
    """
    if split not in SPLITS:
        msg = f"DAGM split {split!r} is unknown; allowed: {', '.join(SPLITS)}"
        raise DatasetError(msg)
    root = require_dir(root, "DAGM root", "point dataset.root at the folder that holds Class1..Class10")
    class_dir = root / f"Class{class_id}"
    if not class_dir.is_dir():
        found = sorted((p.name for p in root.glob("Class*") if p.is_dir()), key=_class_number)
        have = [n.removeprefix("Class") for n in found if n.removeprefix("Class").isdigit()]
        fix = f'; use those: --set "dataset.classes=[{",".join(have)}]"' if have else ""
        msg = f"DAGM class folder {class_dir} does not exist; found: {', '.join(found) or 'none'}{fix}"
        raise DatasetError(msg)
    split_dir = require_dir(
        class_dir / split, "DAGM split folder", "DAGM has Train/ and Test/ in every ClassN"
    )
    label_dir = split_dir / "Label"
    images = sorted(p for p in split_dir.iterdir() if p.suffix in _IMAGE_SUFFIXES and p.is_file())
    if not images:
        msg = f"DAGM split folder {split_dir} holds no .PNG images"
        raise DatasetError(msg)
    labels_txt = label_dir / "Labels.txt"
    listed = _read_labels_txt(labels_txt) if labels_txt.is_file() else {}
    problems, left_out = _check_listing(labels_txt, listed, split_dir, {p.name for p in images})
    _report(labels_txt, problems, lenient)
    samples = []
    for image in images:
        if image.name in left_out:
            continue
        entry = listed.get(image.name)
        label = label_dir / entry.label if entry and entry.label else _default_label(label_dir, image)
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
    root: str | Path,
    classes: list[int] | tuple[int, ...],
    only_defective_images: bool = False,
    lenient: bool = False,
) -> tuple[list[Sample], list[Sample]]:
    """(train, test) samples of the selected classes; ``only_defective_images`` filters training only.

    ``lenient`` turns a Labels.txt that disagrees with the files into warnings.
    """
    train: list[Sample] = []
    test: list[Sample] = []
    for class_id in classes:
        train += load_dagm_split(root, class_id, "Train", lenient)
        test += load_dagm_split(root, class_id, "Test", lenient)
    if only_defective_images:
        train = [s for s in train if s.defective]
    return train, test
