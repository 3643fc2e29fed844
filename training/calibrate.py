"""Choose the decision threshold and the minimum defect area on held-out training images.

The line decides PASS/FAIL with two numbers: the probability threshold and the
smallest connected region that counts as a defect. Picked by hand they are
guesses; picked on the test split they are a leak. ``eval.calibration_fraction``
holds that fraction of the *training* images out of training (stratified by class
and by defective/clean), and after training this module picks both numbers on
them:

- the threshold is the one of UNet_Industrial's thresholds with the best mean Dice
  over the held-out defective images (ties go to the one nearest 0.5);
- the area is the middle, on a log scale, of the gap between the largest false
  region and the smallest largest-region of a held-out defective image. False
  regions are those on held-out clean images *and* those on defective images that
  touch no labelled defect: the same alarm on a clean part would fail it, and
  counting them gives the rule far more evidence than the few clean images alone
  (a model that is right on 90 clean images can still raise one alarm in 100).
  Where the two overlap, the area that makes the fewest mistakes wins (ties: the
  smallest area, as a missed defect costs more than a false alarm).

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
from training.metrics import THRESHOLDS, SegmentationScores, largest_regions

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


def choose_min_area(false_areas: list[int], defective_areas: list[int]) -> int:
    """The minimum region area that best separates false alarms from defects (see the module doc).

    ``false_areas``: the largest false region of each held-out image; ``defective_areas``:
    the largest region of each held-out defective image.
    """
    false_max = max(false_areas, default=0)
    if not defective_areas:
        return false_max + 1
    defective_min = min(defective_areas)
    if defective_min > false_max:
        return max(1, round(math.sqrt(max(false_max, 1) * defective_min)))

    def mistakes(area: int) -> int:
        return sum(a >= area for a in false_areas) + sum(a < area for a in defective_areas)

    candidates = sorted({1, *(a + 1 for a in false_areas), *defective_areas})
    return min(candidates, key=lambda a: (mistakes(a), a))


def calibrate(model, samples: list[Sample], cfg: dict[str, Any]) -> dict[str, Any]:
    """Pick ``threshold`` and ``min_defect_area`` on ``samples``; returns them with the evidence."""
    from training.evaluate import predictions

    # the evaluation's own per-image scores, so held-out Dice is counted exactly as test Dice
    scores = SegmentationScores(cfg["eval"]["threshold"], cfg["eval"]["min_defect_area"])
    # every candidate threshold's largest region and largest false region, so no
    # probability map is kept in memory
    candidates = {*THRESHOLDS, cfg["eval"]["threshold"]}
    regions: dict[float, list[int]] = {t: [] for t in candidates}
    false_regions: dict[float, list[int]] = {t: [] for t in candidates}
    for _, mask, prob, class_id in predictions(model, samples, cfg):
        scores.add(prob, mask, class_id)
        for t in candidates:
            largest, largest_false = largest_regions(prob, t, mask)
            regions[t].append(largest)
            false_regions[t].append(largest_false)
    truth = [row["defective"] for row in scores.rows]
    overall = scores.summary()["overall"]
    if overall["defective"]:
        threshold = choose_threshold({t: overall["dice"][str(t)] for t in THRESHOLDS})
    else:
        threshold = cfg["eval"]["threshold"]
    areas = regions[threshold]
    clean = [a for a, d in zip(areas, truth, strict=True) if not d]
    defective = [a for a, d in zip(areas, truth, strict=True) if d]
    false_alarms = false_regions[threshold]
    min_area = choose_min_area(false_alarms, defective)
    result = {
        "images": len(areas),
        "defective": len(defective),
        "threshold": threshold,
        "min_defect_area": min_area,
        "dice": overall["dice"][str(threshold)],
        "largest_clean_region": max(clean, default=0),
        "largest_false_region": max(false_alarms, default=0),
        "smallest_defect_region": min(defective, default=0),
        "tpr": sum(a >= min_area for a in defective) / len(defective) if defective else None,
        "tnr": sum(a < min_area for a in clean) / len(clean) if clean else None,
    }
    logger.info(
        "calibrated on %d held-out images: threshold %s (Dice %.4f), min_defect_area %d "
        "(largest false region %d px, %d on clean images; smallest defect %d px)",
        result["images"],
        threshold,
        result["dice"] or float("nan"),
        min_area,
        result["largest_false_region"],
        result["largest_clean_region"],
        result["smallest_defect_region"],
    )
    return result
