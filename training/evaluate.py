"""Evaluation of a trained model on a split: per-class scores, examples for the PNG grid."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from converter.preprocessing import NORMALIZATIONS
from training.datasets.base import Sample
from training.metrics import SegmentationScores

logger = logging.getLogger(__name__)


def predictions(model, samples: list[Sample], cfg: dict[str, Any]):
    """(normalized image, mask, probability map, class id) per whole image of ``samples``, each HxW."""
    from training.models import check_input_size
    from training.pipeline import eval_dataset

    checked = False
    for images, masks, class_ids in eval_dataset(samples, cfg):
        if not checked:
            check_input_size(cfg["model"]["architecture"], int(images.shape[1]), int(images.shape[2]))
            checked = True
        probs = np.asarray(model(images, training=False))
        for image, mask, prob, class_id in zip(
            np.asarray(images), np.asarray(masks), probs, np.asarray(class_ids), strict=True
        ):
            yield image[..., 0], mask[..., 0], prob[..., 0], int(class_id)


def evaluate_model(
    model, samples: list[Sample], cfg: dict[str, Any], n_examples: int = 0
) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """Score ``model`` on whole images of ``samples``; returns (summary, up to n_examples examples).

    Examples alternate defective and clean images where both exist, so the grid shows both.
    """
    ev = cfg["eval"]
    if ev["max_images"]:
        samples = samples[: ev["max_images"]]
    scores = SegmentationScores(ev["threshold"], ev["min_defect_area"])
    scale, offset = NORMALIZATIONS[cfg["input"]["normalization"]]
    want_def, want_clean = (n_examples + 1) // 2, n_examples // 2
    defective_ex: list[dict[str, np.ndarray]] = []
    clean_ex: list[dict[str, np.ndarray]] = []
    for image, mask, prob, class_id in predictions(model, samples, cfg):
        row = scores.add(prob, mask, class_id)
        bucket, want = (defective_ex, want_def) if row["defective"] else (clean_ex, want_clean)
        if len(bucket) < want:
            pixels = np.clip((image - offset) / scale, 0, 255).round().astype(np.uint8)
            bucket.append({"image": pixels, "mask": mask, "prob": prob, "class_id": class_id})
    examples = [e for pair in zip(defective_ex, clean_ex, strict=False) for e in pair]
    examples += defective_ex[len(clean_ex) :] + clean_ex[len(defective_ex) :]
    summary = scores.summary()
    overall = summary["overall"]
    logger.info(
        "evaluated %d images: Dice@%s %.4f, TPR %s, TNR %s",
        overall["images"],
        ev["threshold"],
        overall["dice"][str(ev["threshold"])] or float("nan"),
        overall["tpr"],
        overall["tnr"],
    )
    return summary, examples
