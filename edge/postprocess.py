"""Defect map -> decision: threshold, connected components, minimum area, rules."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from converter.regions import keep_regions, mask_regions
from edge.config import DecisionConfig

PASS, FAIL, NO_DECISION = "PASS", "FAIL", "NO_DECISION"


@dataclass
class Decision:
    decision: str
    reason: str
    defect_area: int = 0
    defect_count: int = 0
    #: [x, y, w, h] per defect, in model-input pixels
    boxes: list[list[int]] = field(default_factory=list)
    #: uint8 0/255 mask of the defects kept, drawn at the mask threshold (None for NO_DECISION)
    mask: np.ndarray | None = None
    #: the mask is all background (no pixel above the threshold): the worker sends a flag,
    #: not the bytes
    empty: bool = False


def decide(prob: np.ndarray, rules: DecisionConfig, ignore_mask: np.ndarray | None = None) -> Decision:
    """Turn one (H, W) probability map into a Decision.

    A map holding NaN or Inf means the numbers cannot be trusted (an FP16
    overflow, a broken engine): the answer is NO_DECISION, never PASS.
    """
    # min and max carry any NaN or Inf into their sum: one pass over the map, no temporary.
    low, high = float(prob.min()), float(prob.max())
    if not np.isfinite(low + high):
        return Decision(NO_DECISION, "non-finite model output (NaN/Inf)")
    if high <= rules.threshold:
        # Nothing above the threshold, the usual good part: no labelling, and an empty mask
        # that is flagged (``Decision.empty``) so it need not travel as 0-bytes.
        return Decision(PASS, "no defect", mask=np.zeros(prob.shape, np.uint8), empty=True)
    binary = (prob > rules.threshold).astype(np.uint8)
    if ignore_mask is not None:
        binary &= ignore_mask > 0
    mask, regions = keep_regions(binary, rules.min_defect_area)
    if regions and rules.mask_threshold is not None:
        # the decision is made; only the drawing of its regions follows the mask threshold
        # (calibrated for the mask's Dice, training/calibrate.py)
        mask = mask_regions(prob, mask, rules.mask_threshold, rules.threshold)
        if ignore_mask is not None:
            mask[ignore_mask == 0] = 0
    boxes = [[x, y, w, h] for x, y, w, h, _ in regions]
    area = sum(a for *_, a in regions)
    n = len(regions)
    if n and (area > rules.max_defect_area or n > rules.max_defect_count):
        reason = f"{n} defect(s), {area} px"
        return Decision(FAIL, reason, area, n, boxes, mask)
    reason = "no defect" if not n else f"{n} defect(s), {area} px within limits"
    return Decision(PASS, reason, area, n, boxes, mask, empty=not n)


def merge_tiles(decisions: list[Decision], offsets: list[tuple[int, int]]) -> Decision:
    """Join the decisions of a frame's tiles into one: any NO_DECISION wins, then FAIL."""
    boxes = [
        [x + ox, y + oy, w, h]
        for d, (oy, ox) in zip(decisions, offsets, strict=True)
        for x, y, w, h in d.boxes
    ]
    area = sum(d.defect_area for d in decisions)
    count = sum(d.defect_count for d in decisions)
    for verdict in (NO_DECISION, FAIL):
        reasons = [d.reason for d in decisions if d.decision == verdict]
        if reasons:
            return Decision(verdict, f"{len(reasons)} tile(s): {reasons[0]}", area, count, boxes)
    return Decision(PASS, "no defect" if not count else "defects within limits", area, count, boxes)
