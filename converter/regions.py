"""The regions the line keeps: one definition for the line's decision and for evaluation.

It lives in ``converter``, the floor that ``edge`` and ``training`` both stand on
(docs/architecture.md), so that neither imports the other.
"""

from __future__ import annotations

import cv2
import numpy as np

#: a kept region: x, y, w, h, area (pixels)
Region = tuple[int, int, int, int, int]


def keep_regions(binary: np.ndarray, min_area: int) -> tuple[np.ndarray, list[Region]]:
    """The defect mask the line emits: the 8-connected regions of ``binary`` (a 0/1 uint8 map)
    with at least ``min_area`` pixels, as a 0/255 uint8 mask, and each one's (x, y, w, h, area).

    The line decides with it (edge/postprocess.py) and `lineside eval` scores the same mask
    (training/metrics.py), so that its figures describe what a line's users receive."""
    mask = np.zeros(binary.shape, np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    # Label 0 is the background.
    keep = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    if keep:
        mask[np.isin(labels, keep)] = 255
    return mask, [tuple(int(v) for v in stats[i]) for i in keep]


def mask_regions(prob: np.ndarray, kept: np.ndarray, threshold: float, decided_at: float) -> np.ndarray:
    """The mask a line publishes when it draws at ``threshold`` (``mask_threshold``) rather than
    at the decision's threshold: the 8-connected regions of ``prob > threshold`` that touch a
    region the decision kept (``kept``, the 0/255 mask of ``keep_regions``), as a 0/255 uint8 mask.

    Below the decision's threshold this is hysteresis: a kept region grows to the extent of the
    weaker evidence around it, and a weak region that touches no kept one stays out. Above it,
    each kept region shrinks to its stronger core. The decision (which regions, their area) is
    the same either way; only the drawing changes. At the decision's own threshold (``decided_at``),
    or with nothing kept, the mask is ``kept`` itself."""
    if threshold == decided_at or not kept.any():
        return kept
    binary = (prob > threshold).astype(np.uint8)
    count, labels = cv2.connectedComponents(binary, connectivity=8)
    touched = np.unique(labels[(kept > 0) & (binary > 0)])
    # a lookup table from label to mask value: one pass over the map
    lut = np.zeros(count, np.uint8)
    lut[touched[touched > 0]] = 255
    return lut[labels]
