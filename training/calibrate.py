"""Choose the decision threshold and the minimum defect area on held-out training images.

The line decides PASS/FAIL with two numbers: the probability threshold and the
smallest connected region that counts as a defect. Picked by hand they are
guesses; picked on the test split they are a leak. ``eval.calibration_fraction``
holds that fraction of the *training* images out of training (stratified by class
and by defective/clean), and after training this module picks both numbers on
them:

- the threshold is the one of UNet_Industrial's thresholds with the best mean Dice
  over the held-out defective images (ties go to the one nearest 0.5);
- the area is the middle, on a log scale, of the gap between the largest region
  predicted on a held-out clean image and the smallest largest-region of a held-out
  defective image. Where the two overlap, the area that makes the fewest mistakes
  wins (ties: the smallest area, as a missed defect costs more than a false alarm).

The chosen values go into ``training.json``, so ``lineside export`` carries them
into the model package and the line applies them.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

import numpy as np

from training.datasets.base import Sample
from training.metrics import THRESHOLDS, SegmentationScores, largest_region

logger = logging.getLogger(__name__)


def hold_out(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(kept for training, held out) with ``fraction`` of every (class, defective) group held out.

    Deterministic for a seed; each non-empty group keeps at least one training image.
    """
    groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[(s.class_id, s.defective)].append(i)
    rng = np.random.default_rng([seed, 7])
    held: set[int] = set()
    for key in sorted(groups):
        idx = groups[key]
        n = min(round(len(idx) * fraction), len(idx) - 1)
        held.update(int(i) for i in rng.permutation(idx)[:n])
    keep = [s for i, s in enumerate(samples) if i not in held]
    out = [s for i, s in enumerate(samples) if i in held]
    return keep, out


def choose_threshold(dice_by_threshold: dict[float, float]) -> float:
    """The threshold with the best Dice; ties go to the one nearest 0.5."""
    return max(dice_by_threshold, key=lambda t: (round(dice_by_threshold[t], 6), -abs(t - 0.5)))


def choose_min_area(clean_areas: list[int], defective_areas: list[int]) -> int:
    """The minimum region area that best separates clean from defective images (see the module doc)."""
    clean_max = max(clean_areas, default=0)
    if not defective_areas:
        return clean_max + 1
    defective_min = min(defective_areas)
    if defective_min > clean_max:
        return max(1, round(math.sqrt(max(clean_max, 1) * defective_min)))

    def mistakes(area: int) -> int:
        return sum(a >= area for a in clean_areas) + sum(a < area for a in defective_areas)

    candidates = sorted({1, *(a + 1 for a in clean_areas), *defective_areas})
    return min(candidates, key=lambda a: (mistakes(a), a))


def calibrate(model, samples: list[Sample], cfg: dict[str, Any]) -> dict[str, Any]:
    """Pick ``threshold`` and ``min_defect_area`` on ``samples``; returns them with the evidence."""
    from training.evaluate import predictions

    # the evaluation's own per-image scores, so held-out Dice is counted exactly as test Dice
    scores = SegmentationScores(cfg["eval"]["threshold"], cfg["eval"]["min_defect_area"])
    # every candidate threshold's largest region, so no probability map is kept in memory
    regions: dict[float, list[int]] = {t: [] for t in {*THRESHOLDS, cfg["eval"]["threshold"]}}
    for _, mask, prob, class_id in predictions(model, samples, cfg):
        scores.add(prob, mask, class_id)
        for t, found in regions.items():
            found.append(largest_region(prob, t))
    truth = [row["defective"] for row in scores.rows]
    overall = scores.summary()["overall"]
    if overall["defective"]:
        threshold = choose_threshold({t: overall["dice"][str(t)] for t in THRESHOLDS})
    else:
        threshold = cfg["eval"]["threshold"]
    areas = regions[threshold]
    clean = [a for a, d in zip(areas, truth, strict=True) if not d]
    defective = [a for a, d in zip(areas, truth, strict=True) if d]
    min_area = choose_min_area(clean, defective)
    result = {
        "images": len(areas),
        "defective": len(defective),
        "threshold": threshold,
        "min_defect_area": min_area,
        "dice": overall["dice"][str(threshold)],
        "largest_clean_region": max(clean, default=0),
        "smallest_defect_region": min(defective, default=0),
        "tpr": sum(a >= min_area for a in defective) / len(defective) if defective else None,
        "tnr": sum(a < min_area for a in clean) / len(clean) if clean else None,
    }
    logger.info(
        "calibrated on %d held-out images: threshold %s (Dice %.4f), min_defect_area %d "
        "(largest clean region %d px, smallest defect %d px)",
        result["images"],
        threshold,
        result["dice"] or float("nan"),
        min_area,
        result["largest_clean_region"],
        result["smallest_defect_region"],
    )
    return result
