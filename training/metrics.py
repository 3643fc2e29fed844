"""Evaluation metrics in numpy: pixel IoU / Dice at UNet_Industrial's thresholds and image-level TPR / TNR.

Per image and threshold t, with P = prob > t and G = mask > 0.5:
``dice = (2|P&G| + eps) / (|P| + |G| + eps)`` and ``iou = (|P&G| + eps) / (|P or G| + eps)``
(eps = 1e-5, so a clean image with a clean prediction scores 1, as in UNet_Industrial,
whose "IoU" is in fact this Dice). Scores are means over images, reported both over
defective images only (the strict figure) and over all images (UNet_Industrial's).

Cerebras reports DAGM scores from one confusion matrix over every pixel of the split:
``dsc_2class`` and ``miou_2class`` are the Dice and IoU of the defect class and of the
background class, averaged over the two (its "DSC" and "mIOU"); ``pixel_dice`` is the
defect class's share alone, the strictest pixel figure.

An image is called defective when the prediction at the decision threshold has a
connected region (8-connectivity) of at least ``min_defect_area`` pixels, the same
rule the line-side daemon applies. The mask the line emits holds only those regions
(``converter.regions.keep_regions``), drawn at ``mask_threshold`` when one is given
(``converter.regions.mask_regions``: the regions above it that touch a kept region);
``dice_line`` and ``iou_line`` score that mask, beside the published counts, which score every
pixel above the decision threshold.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import cv2
import numpy as np

from converter.regions import keep_regions, mask_regions

THRESHOLDS: tuple[float, ...] = (0.05, 0.125, 0.25, 0.5, 0.75, 0.85, 0.95, 0.99)
EPS = 1e-5


def confusion(prob: np.ndarray, mask: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """(true, false, missed) defect pixels of one image's prediction at ``threshold``."""
    pred = prob > threshold
    gt = mask > 0.5
    tp = int(np.count_nonzero(pred & gt))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(gt)) - tp


def _dice_iou(tp: int, fp: int, fn: int) -> tuple[float, float]:
    return (2 * tp + EPS) / (2 * tp + fp + fn + EPS), (tp + EPS) / (tp + fp + fn + EPS)


def dice_iou(prob: np.ndarray, mask: np.ndarray, threshold: float) -> tuple[float, float]:
    """(Dice, IoU) of one image's prediction at ``threshold`` against its mask."""
    return _dice_iou(*confusion(prob, mask, threshold))


def largest_regions(prob: np.ndarray, threshold: float, truth: np.ndarray | None = None) -> tuple[int, int]:
    """(largest region, largest false region) of ``prob > threshold``, in pixels (0 for none).

    A false region touches no pixel of ``truth``: on a clean image (``truth`` all zero
    or None) it is the largest region; on a defective one, the largest alarm away from
    the labelled defect. One labelling serves both, as calibration needs both per threshold.
    """
    binary = (prob > threshold).astype(np.uint8)
    if not binary.any():
        return 0, 0
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = int(areas.max())
    if truth is None:
        return largest, largest
    touched = np.unique(labels[(truth > 0.5) & (labels > 0)]) - 1
    false_areas = np.delete(areas, touched)
    return largest, int(false_areas.max()) if false_areas.size else 0


class SegmentationScores:
    """Accumulates per-image scores, then summarizes them per class and over all classes."""

    def __init__(
        self,
        threshold: float = 0.5,
        min_defect_area: int = 16,
        thresholds=THRESHOLDS,
        mask_threshold: float | None = None,
    ):
        self.threshold = threshold
        self.min_defect_area = min_defect_area
        #: the line draws its mask at this score (None: at ``threshold``)
        self.mask_threshold = threshold if mask_threshold is None else mask_threshold
        self.thresholds = tuple(sorted({*thresholds, threshold}))
        self._rows: list[dict[str, Any]] = []

    @classmethod
    def at_rule(cls, ev: dict[str, Any]) -> SegmentationScores:
        """Scores at a run's rule: the ``threshold``, ``min_defect_area`` and ``mask_threshold``
        of its ``eval`` config section."""
        return cls(ev["threshold"], ev["min_defect_area"], mask_threshold=ev["mask_threshold"])

    def add(self, prob: np.ndarray, mask: np.ndarray, class_id: int = 0) -> dict[str, Any]:
        """Score one image (prob and mask HxW, or HxWx1) and return its row."""
        prob = np.asarray(prob, np.float32).reshape(np.asarray(prob).shape[:2])
        mask = np.asarray(mask).reshape(np.asarray(mask).shape[:2])
        truth = bool((mask > 0.5).any())
        line_mask, regions = keep_regions((prob > self.threshold).astype(np.uint8), self.min_defect_area)
        line_mask = mask_regions(prob, line_mask, self.mask_threshold, self.threshold)
        largest, largest_false = largest_regions(prob, self.threshold, mask)
        row: dict[str, Any] = {
            "class_id": int(class_id),
            "defective": truth,
            "predicted_defective": bool(regions),
            # the two image scores the AUROC ranks by (see image_auroc)
            "largest_region_px": largest,
            "peak": float(prob.max()),
            "largest_false_region_px": largest_false,
        }
        # the mask the line emits: a clean image whose false pixels are all in regions below
        # the minimum area scores 1 here, as the line shows it no defect
        row["dice_line"], row["iou_line"] = _dice_iou(*confusion(line_mask, mask, 0.5))
        for t in self.thresholds:
            tp, fp, fn = confusion(prob, mask, t)
            row[f"dice@{t}"], row[f"iou@{t}"] = _dice_iou(tp, fp, fn)
            row[f"pixels@{t}"] = (tp, fp, fn, mask.size)
        self._rows.append(row)
        return row

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows)

    def _summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        defective = [r for r in rows if r["defective"]]
        clean = [r for r in rows if not r["defective"]]
        tp = sum(r["predicted_defective"] for r in defective)
        tn = sum(not r["predicted_defective"] for r in clean)
        out: dict[str, Any] = {
            "images": len(rows),
            "defective": len(defective),
            "tp": tp,
            "fn": len(defective) - tp,
            "tn": tn,
            "fp": len(clean) - tn,
            "tpr": tp / len(defective) if defective else None,
            "tnr": tn / len(clean) if clean else None,
            "accuracy": (tp + tn) / len(rows) if rows else None,
            "image_auroc": {
                "largest_region": image_auroc(rows, "largest_region_px"),
                "peak": image_auroc(rows, "peak"),
            },
        }
        for kind in ("dice", "iou"):
            out[kind] = {str(t): _mean(defective, f"{kind}@{t}") for t in self.thresholds}
            out[f"{kind}_all_images"] = {str(t): _mean(rows, f"{kind}@{t}") for t in self.thresholds}
            out[f"{kind}_line"] = _mean(defective, f"{kind}_line")
            out[f"{kind}_line_all_images"] = _mean(rows, f"{kind}_line")
        pixel = {t: _pixel_scores(rows, f"pixels@{t}") for t in self.thresholds}
        for key in ("pixel_dice", "dsc_2class", "miou_2class"):
            out[key] = {str(t): pixel[t][key] for t in self.thresholds}
        return out

    def summary(self) -> dict[str, Any]:
        """{"threshold", "min_defect_area", "overall": {...}, "per_class": {class_id: {...}}}."""
        by_class: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in self._rows:
            by_class[row["class_id"]].append(row)
        return {
            "threshold": self.threshold,
            "min_defect_area": self.min_defect_area,
            "mask_threshold": self.mask_threshold,
            "overall": self._summary(self._rows),
            "per_class": {str(c): self._summary(rows) for c, rows in sorted(by_class.items())},
        }


def image_auroc(rows: list[dict[str, Any]], key: str) -> float | None:
    """The image-level ROC AUC of score ``key``: the chance that a defective image scores above a
    clean one (ties count half), None without both kinds.

    It judges the model apart from any rule: the largest region at the decision threshold is the
    score whose cut is the minimum area, so its AUROC bounds what any minimum area can reach at
    that threshold (1: some area separates every image; 0.5: the regions say nothing). The peak
    probability is the threshold-free view. Both are anomalib's image AUROC, on our scores.
    """
    pos = np.array([r[key] for r in rows if r["defective"]], np.float64)
    neg = np.array([r[key] for r in rows if not r["defective"]], np.float64)
    if not pos.size or not neg.size:
        return None
    # Mann-Whitney U from the pairwise comparison: at most a few thousand images per split
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (pos.size * neg.size))


def _pixel_scores(rows: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """Split-level pixel scores from the summed confusion counts (tp, fp, fn, pixels) of ``rows``.

    A class that appears in neither the labels nor the predictions is left out of the
    two-class means, as in Cerebras' streaming metrics.
    """
    tp, fp, fn, n = (sum(r[key][i] for r in rows) for i in range(4))
    tn = n - tp - fp - fn
    dice, iou = [], []
    for hit, wrong in ((tp, fp + fn), (tn, fp + fn)):
        if hit + wrong:
            dice.append(2 * hit / (2 * hit + wrong))
            iou.append(hit / (hit + wrong))
    return {
        "pixel_dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        "dsc_2class": float(np.mean(dice)) if dice else None,
        "miou_2class": float(np.mean(iou)) if iou else None,
    }


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    return float(np.mean([r[key] for r in rows])) if rows else None


def format_table(summary: dict[str, Any]) -> str:
    """A per-class text table at the decision threshold (and Dice/IoU at 0.75, NVIDIA's reference)."""
    t = str(summary["threshold"])
    header = (
        f"{'class':>7} {'images':>6} {'defect':>6} {'Dice@' + t:>9} {'IoU@' + t:>9} "
        f"{'IoU@0.75':>9} {'TPR':>7} {'TNR':>7} {'AUROC':>6}"
    )
    lines = [header, "-" * len(header)]

    def fmt(v: float | None, pct: bool = False) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.4f}"

    def fmt3(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = [*summary["per_class"].items(), ("all", summary["overall"])]
    for name, s in rows:
        lines.append(
            f"{name:>7} {s['images']:>6} {s['defective']:>6} "
            f"{fmt(s['dice'].get(t)):>9} {fmt(s['iou'].get(t)):>9} "
            f"{fmt(s['iou'].get('0.75')):>9} {fmt(s['tpr'], True):>7} {fmt(s['tnr'], True):>7} "
            f"{fmt3(s['image_auroc']['largest_region']):>6}"
        )
    lines.append(
        f"(Dice/IoU: mean over defective images; decision: region >= {summary['min_defect_area']} px; "
        f"AUROC: defective against clean images by their largest region @{t}, any minimum area)"
    )
    o = summary["overall"]
    lines.append(
        f"published ways @{t}: UNet_Industrial (all images) Dice {fmt(o['dice_all_images'].get(t))}; "
        f"Cerebras (split pixels, 2-class mean) DSC {fmt(o['dsc_2class'].get(t))}, "
        f"mIoU {fmt(o['miou_2class'].get(t))}; defect-class pixel Dice {fmt(o['pixel_dice'].get(t))}"
    )
    # summaries written before the mask threshold existed draw at the decision threshold
    drawn = summary.get("mask_threshold", summary["threshold"])
    drawn_at = "" if drawn == summary["threshold"] else f", drawn @{drawn:g}"
    lines.append(
        f"the line's mask (regions >= {summary['min_defect_area']} px) @{t}{drawn_at}: "
        f"Dice {fmt(o['dice_line'])} on defective images, {fmt(o['dice_line_all_images'])} on all images"
    )
    lines.append(
        f"image AUROC (no rule): largest region @{t} {fmt3(o['image_auroc']['largest_region'])}, "
        f"peak probability {fmt3(o['image_auroc']['peak'])}"
    )
    return "\n".join(lines)
