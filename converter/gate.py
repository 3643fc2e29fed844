"""The accuracy gate: a reduced-precision graph against the FP32 graph on real images.

Both graphs run in ONNX Runtime on the same normalized validation images. The gate
compares what the line acts on, not raw numbers:

- no NaN or Inf anywhere in the candidate's output;
- mask Dice: the thresholded masks of all images pooled, 2|A∩B| / (|A|+|B|)
  (1.0 when both are empty everywhere);
- pass/fail agreement: the share of images whose decision (any 8-connected region of
  at least ``min_defect_area`` pixels above the threshold -> FAIL) is the same.

The decision rule mirrors ``edge.postprocess.decide`` (the converter may not import
``edge``); tests/converter/test_gate.py checks the two agree.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from converter.errors import LinesideError

log = logging.getLogger(__name__)


class GateError(LinesideError, RuntimeError):
    """A reduced-precision graph failed its accuracy gate; the message says what to do."""


@dataclass(frozen=True)
class GateBounds:
    """What a candidate graph must reach against FP32 to be written."""

    min_dice: float
    min_agreement: float


#: FP16 (issue 4): Dice >= 0.99, agreement >= 99.5 %
FP16_BOUNDS = GateBounds(min_dice=0.99, min_agreement=0.995)
#: INT8 (documented in docs/converter.md): 8-bit activations move mask edges by a pixel,
#: so Dice is allowed to drop further than FP16, but decisions must still agree
INT8_BOUNDS = GateBounds(min_dice=0.95, min_agreement=0.98)


@dataclass
class GateReport:
    """The outcome of one gate run; stored in the manifest under ``gates``."""

    name: str
    images: int
    nonfinite: int
    dice: float
    min_image_dice: float
    agreement: float
    disagreements: list[str]
    max_abs_diff: float
    #: FP32 defect pixels over all images: a Dice on empty masks proves little
    reference_defect_pixels: int
    reference_fail_images: int
    bounds: dict[str, float]
    passed: bool
    reasons: list[str] = field(default_factory=list)
    #: FP16 only: nodes kept in FP32 beyond the default block list
    kept_fp32: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("dice", "min_image_dice", "agreement", "max_abs_diff"):
            data[key] = round(float(data[key]), 6)
        return data

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{self.name} gate {verdict}: mask Dice {self.dice:.4f} "
            f"(min per image {self.min_image_dice:.4f}), "
            f"pass/fail agreement {self.agreement:.2%} on {self.images} images, non-finite outputs "
            f"{self.nonfinite}, max |diff| {self.max_abs_diff:.3g}"
            + (f" [{'; '.join(self.reasons)}]" if self.reasons else "")
        )


def is_fail(probability: np.ndarray, threshold: float, min_defect_area: int) -> bool:
    """The line's decision for one (H, W) map: any 8-connected region >= min area above threshold."""
    binary = (probability > threshold).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    return bool(count > 1 and (stats[1:, cv2.CC_STAT_AREA] >= min_defect_area).any())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    name: str,
    threshold: float,
    min_defect_area: int,
    bounds: GateBounds,
    names: list[str] | None = None,
) -> GateReport:
    """Gate ``candidate`` probabilities against ``reference`` (both (N, H, W) or (N, H, W, 1))."""
    ref = np.asarray(reference, dtype=np.float32).reshape(len(reference), *reference.shape[1:3])
    cand = np.asarray(candidate, dtype=np.float32).reshape(len(candidate), *candidate.shape[1:3])
    if ref.shape != cand.shape:
        msg = f"{name} gate: output shape {cand.shape} differs from FP32 {ref.shape}"
        raise GateError(msg)
    names = names or [f"image {i}" for i in range(len(ref))]
    finite = np.isfinite(cand).reshape(len(cand), -1).all(axis=1)
    ref_masks, cand_masks = ref > threshold, cand > threshold
    per_image = [dice(r, c) for r, c in zip(ref_masks, cand_masks, strict=True)]
    disagree = [
        names[i]
        for i in range(len(ref))
        # a NaN map is NO_DECISION on the line, never the same answer as FP32
        if not finite[i]
        or is_fail(ref[i], threshold, min_defect_area) != is_fail(cand[i], threshold, min_defect_area)
    ]
    with np.errstate(invalid="ignore"):
        diff = np.abs(ref - cand)
    report = GateReport(
        name=name,
        images=len(ref),
        nonfinite=int((~finite).sum()),
        dice=dice(ref_masks, cand_masks),
        min_image_dice=min(per_image) if per_image else 1.0,
        agreement=1.0 - len(disagree) / max(len(ref), 1),
        disagreements=disagree,
        max_abs_diff=float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf"),
        reference_defect_pixels=int(ref_masks.sum()),
        reference_fail_images=sum(is_fail(r, threshold, min_defect_area) for r in ref),
        bounds=asdict(bounds),
        passed=False,
    )
    if report.nonfinite:
        report.reasons.append(f"{report.nonfinite} image(s) with NaN/Inf output")
    if report.dice < bounds.min_dice:
        report.reasons.append(f"Dice {report.dice:.4f} < {bounds.min_dice}")
    if report.agreement < bounds.min_agreement:
        report.reasons.append(f"agreement {report.agreement:.2%} < {bounds.min_agreement:.1%}")
    report.passed = not report.reasons
    if report.reference_defect_pixels == 0:
        log.warning("%s gate: FP32 finds no defect pixel on these images; the Dice proves little", name)
    log.info("%s", report.summary())
    return report


def run_gate(
    reference_session,
    candidate_session,
    images: np.ndarray,
    *,
    name: str,
    threshold: float,
    min_defect_area: int,
    bounds: GateBounds,
    names: list[str] | None = None,
    batch: int = 4,
) -> GateReport:
    """Run both ONNX Runtime sessions on ``images`` (normalized float32) and compare them."""
    from converter.onnx_graph import run_batches

    ref = run_batches(reference_session, images, batch)
    cand = run_batches(candidate_session, images, batch)
    return compare(
        ref, cand, name=name, threshold=threshold, min_defect_area=min_defect_area, bounds=bounds, names=names
    )
