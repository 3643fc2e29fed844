"""Evaluation of a trained model on a split: per-class scores, per-image rows, the images that fail worst.

``lineside eval`` shows what fails: its grid holds, per class, the defective images
with the lowest Dice and the clean images with the largest false region, and its JSON
keeps one row per image (what the line decided and why), so a reader can find the
image behind every figure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from converter.preprocessing import pixels_of
from training.calibrate import RegionTally, hindsight_rule
from training.datasets.base import Sample
from training.metrics import SegmentationScores

logger = logging.getLogger(__name__)


def predictions(model, samples: list[Sample], cfg: dict[str, Any], change=None):
    """(normalized image, mask, probability map, class id) per whole image of ``samples``, each HxW.

    ``change(image, index)``, if given, alters each normalized HxW image in place before the
    model sees it; ``index`` is the image's place in ``samples`` (the camera check's artifacts).
    """
    from training.models import check_model_input
    from training.pipeline import eval_dataset

    checked, index = False, 0
    for images, masks, class_ids in eval_dataset(samples, cfg):
        if not checked:
            check_model_input(cfg["model"], int(images.shape[1]), int(images.shape[2]))
            checked = True
        if change is not None:
            images = np.array(images)  # a copy of its own, changed in place
            for image in images:  # each HxWx1
                change(image[..., 0], index)
                index += 1
        probs = np.asarray(model(images, training=False))
        for image, mask, prob, class_id in zip(
            np.asarray(images), np.asarray(masks), probs, np.asarray(class_ids), strict=True
        ):
            yield image[..., 0], mask[..., 0], prob[..., 0], int(class_id)


def image_row(sample: Sample, scores: dict[str, Any], threshold: float):
    """One image's line in ``eval.json``: truth, decision, Dice and region sizes at ``threshold``,
    all taken from its row in ``SegmentationScores`` (which counted them already)."""
    truth, decided = scores["defective"], scores["predicted_defective"]
    tp, fp, fn, _ = scores[f"pixels@{threshold}"]
    return {
        "image": sample.image,
        "name": Path(sample.image).name,
        "class_id": scores["class_id"],
        "defective": truth,
        "predicted_defective": decided,
        "outcome": ("TP" if decided else "FN") if truth else ("FP" if decided else "TN"),
        # Dice of a clean image only says whether anything was predicted: the region sizes say more
        "dice": scores[f"dice@{threshold}"] if truth else None,
        "dice_line": scores["dice_line"] if truth else None,  # of the regions the line keeps
        "defect_px": tp + fn,
        "predicted_px": tp + fp,
        "largest_region_px": scores["largest_region_px"],
        "largest_false_region_px": scores["largest_false_region_px"],
    }


def failure_key(row: dict[str, Any]) -> tuple[float, ...]:
    """Sorts the worst first: defective images by lowest Dice, clean ones by largest false region."""
    if row["defective"]:
        return (row["dice"], -row["largest_false_region_px"])
    return (-row["largest_false_region_px"], -row["predicted_px"])


class WorstImages:
    """Keeps, per class, the defective and the clean images that fail worst, while images stream by.

    ``per_class`` images per class: half (rounded up) defective, the rest clean; a class
    short of one kind fills up with the other. Only those images' arrays stay in memory.
    """

    def __init__(self, per_class: int):
        self.per_class = per_class
        self._kept: dict[tuple[int, bool], list[tuple[tuple, int, dict[str, Any]]]] = {}
        self._seen = 0

    def offer(self, row: dict[str, Any], example) -> None:
        """Consider one image; ``example`` builds its grid entry only when it is kept."""
        if not self.per_class:
            return
        kept = self._kept.setdefault((row["class_id"], row["defective"]), [])
        key = (failure_key(row), self._seen)
        self._seen += 1
        if len(kept) < self.per_class or key < kept[-1][:2]:
            kept.append((*key, {**example(), "row": row}))
            kept.sort(key=lambda entry: entry[:2])
            del kept[self.per_class :]

    def examples(self) -> list[dict[str, Any]]:
        """Per class in order: its worst defective images, then its worst clean ones."""
        out = []
        for class_id in sorted({c for c, _ in self._kept}):
            defective = [e for *_, e in self._kept.get((class_id, True), [])]
            clean = [e for *_, e in self._kept.get((class_id, False), [])]
            n_def = max((self.per_class + 1) // 2, self.per_class - len(clean))
            n_def = min(n_def, len(defective))
            out += defective[:n_def] + clean[: self.per_class - n_def]
        return out


def evaluate_model(
    model, samples: list[Sample], cfg: dict[str, Any], n_examples: int = 0
) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """Score ``model`` on whole images of ``samples``; returns (summary, examples for the grid).

    The summary holds one row per image under ``images``; the examples are, per class,
    up to ``n_examples`` images that fail worst (see ``WorstImages``).
    """
    ev = cfg["eval"]
    if ev["max_images"]:
        samples = samples[: ev["max_images"]]
    scores = SegmentationScores.at_rule(ev)
    tally = RegionTally(ev["threshold"])
    worst = WorstImages(n_examples)
    rows = []
    for sample, (image, mask, prob, class_id) in zip(samples, predictions(model, samples, cfg), strict=True):
        row = image_row(sample, scores.add(prob, mask, class_id), ev["threshold"])
        rows.append(row)
        tally.add(prob, mask)

        def example(image=image, mask=mask, prob=prob, class_id=class_id):
            pixels = pixels_of(image, cfg["input"]["normalization"])
            return {"image": pixels, "mask": mask, "prob": prob, "class_id": class_id}

        worst.offer(row, example)
    summary = scores.summary()
    summary["hindsight"] = hindsight_rule(tally.evidence(summary["overall"]["dice"]), ev["min_tnr"])
    summary["images"] = rows
    overall = summary["overall"]
    logger.info(
        "evaluated %d images: Dice@%s %.4f, TPR %s, TNR %s",
        overall["images"],
        ev["threshold"],
        overall["dice"][str(ev["threshold"])] or float("nan"),
        overall["tpr"],
        overall["tnr"],
    )
    return summary, worst.examples()
