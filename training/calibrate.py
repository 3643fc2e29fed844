"""Choose the decision threshold and the minimum defect area on held-out training images.

The line decides PASS/FAIL with two numbers: the probability threshold and the
smallest connected region that counts as a defect. Picked by hand they are
guesses; picked on the test split they are a leak. ``eval.calibration_fraction``
holds that fraction of the *training* images out of training (stratified by class
and by defective/clean), and after training this module picks both numbers on
them. A rule is a (threshold, minimum area) pair; the chosen rule is

1. at each candidate threshold the area is ``AREA_ROOM`` (sqrt(2)) times the smallest area that
   meets the TNR floor ``eval.min_tnr`` (default 0.98): room above the false regions the floor
   lets pass, which many images show, rather than an area between them and the smallest caught
   defect, which a few dozen show;
2. the threshold whose rule catches the most held-out defective images with room (a region at
   least ``AREA_ROOM`` times the area again) wins, then the most caught at the area (image TPR;
   no tolerance: one image is one image): a missed defect costs more than a false alarm, but a
   line that stops on every part is useless;
3. then the best mean Dice over the held-out defective images, the highest TNR, and the
   threshold nearest 0.5;
4. when no threshold's area with room catches a held-out defect, the rule that catches the most
   at the floor is kept (ties as in 3), its area the middle on a log scale of the areas that give
   the same held-out result, so both sides keep what margin there is.

TNR is counted twice and the floor applies to both: over the held-out clean images
(the ordinary TNR), and over every held-out image, where a defective image counts as
a false alarm when it has a false region (one that touches no labelled defect) at
least the minimum area. The same alarm on a clean part would fail it, and the
defective images give far more evidence of what the model does on clean texture than
the few clean images alone. The floor applies a third time, to up to
``eval.tnr_training_images`` clean images the model trained on: they can only tighten the
rule (a model that memorized them passes them all), and on the real-surface set they
foretold the test TNR where the few held-out clean images did not (docs/training.md, stop 35:
95.5-97.9 % on them, 93.6-97.4 % on the test split, 98.3-100 % held out).

On 24 real-surface runs (docs/training.md, stop 47) the room cost no defects found on the
test images (47.6 % against 47.0 %, mean) and kept every run's test TNR at 98 % or more, where
the area between the two sides let three runs fall to 97.4 %.

When no rule that catches a defect meets the floor, the rule with the best TNR among
those that catch one is kept, and a warning says so; warnings also say when the
held-out TPR is below 90 % or no held-out defect survives the chosen rule. They go
into ``training.json`` (``warnings``) and the training summary. A note (``notes``, not a
warning: the held-out scores stand) says when the held-out regions on either side of the
chosen area are less than 2x apart: a rule on a knife-edge, which new images move. Another
says when the held-out clean images are too few to show the floor: ``tnr_interval`` is the
95 % (Wilson) interval of the line's TNR that they support, and a floor of 98 % takes about
190 clean images without a false alarm before that interval clears it.

The rule decides; the mask the line draws can come from another threshold. With
``eval.mask_threshold`` null, the held-out defective images are predicted a second time and,
under the chosen rule, each candidate threshold draws the regions above it that touch a region
the rule kept (``converter.regions.mask_regions``: hysteresis below the rule's threshold, the
kept regions' cores above it); the candidate with the best mean Dice of that mask is the
``mask_threshold`` when it beats the rule's own threshold by ``MIN_MASK_DICE_GAIN`` (a smaller
gain is noise of the few held-out images), else the rule's threshold stays. A rule chosen for
catching defects at a TNR floor often sits at a high threshold whose regions are the defects'
cores (on the real-surface set 0.95); the mask need not pay for that.

The chosen values go into ``training.json``, so ``lineside export`` carries them
into the model package and the line applies them.

``hindsight_rule`` makes the same choice on a scored split (the test images) for the report
only: the most any rule catches there at the floor, which tells a miss that calibration cost
from one the model makes.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from converter.regions import keep_regions, mask_regions
from training.datasets.base import Sample
from training.metrics import THRESHOLDS, SegmentationScores, dice_iou, largest_regions

logger = logging.getLogger(__name__)

#: below this held-out TPR the training summary and ``training.json`` carry a warning
MIN_TPR = 0.90
#: z of the 95 % interval that the held-out TNR is given (``tnr_evidence_notes``)
CONFIDENCE_Z = 1.96
#: the mask threshold leaves the rule's threshold only for at least this gain in held-out mean Dice
#: of the line's mask: on real-surface seed 2 a gain of 0.002 held out was a loss of 0.003 on the
#: test split, on seed 1 a gain of 0.034 held out was 0.083 on it (docs/training.md, stop 42)
MIN_MASK_DICE_GAIN = 0.01
#: a chosen area between held-out regions less than this factor apart earns a note: a region on
#: a new image a little off those seen flips the decision (a real-surface run chose 6,854 px
#: between held-out regions of 6,688 and 7,024 px; docs/training.md, Calibration)
MIN_AREA_ROOM = 2.0
#: the chosen area is this factor above the smallest area that holds the TNR floor, and a held-out
#: defect counts towards choosing the threshold when its region is this factor above the area: the
#: 2x room above split evenly between false alarms and defects (docs/training.md, stop 47)
AREA_ROOM = math.sqrt(MIN_AREA_ROOM)


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


@dataclass(frozen=True)
class Rule:
    """A threshold and the range of minimum areas ``lo..hi`` (``hi`` None: no end) that score alike."""

    threshold: float
    lo: int
    hi: int | None
    caught: int  # held-out defective images with a region of at least the area
    tnr_clean: float | None  # share of held-out clean images without such a region
    tnr_all: float | None  # share of all held-out images without such a false region
    tnr_trained: float | None = None  # share of the clean training images without such a region
    #: the minimum area the line applies, within ``lo..hi``; None: the middle (``area``)
    chosen_area: int | None = None

    @property
    def tnr(self) -> float:
        """The lowest of the TNRs: the floor applies to each."""
        values = [v for v in (self.tnr_clean, self.tnr_all, self.tnr_trained) if v is not None]
        return min(values, default=1.0)

    @property
    def area(self) -> int:
        """``chosen_area``, else the middle of ``lo..hi`` on a log scale (both sides keep a margin)."""
        if self.chosen_area is not None:
            return self.chosen_area
        if self.hi is None:
            return self.lo
        return min(max(round(math.sqrt(max(self.lo - 1, 1) * self.hi)), self.lo), self.hi)


@dataclass
class Evidence:
    """Per held-out image and candidate threshold: its largest region and largest false region."""

    truth: list[bool]
    regions: dict[float, list[int]]
    false_regions: dict[float, list[int]]
    dice: dict[float, float | None]  # mean Dice over the defective images
    #: per threshold, the largest region of each clean image the model trained on (may be empty)
    trained_clean: dict[float, list[int]] = field(default_factory=dict)


class RegionTally:
    """Per image and candidate threshold, its largest region and largest false region (and
    per clean image the model trained on, its largest region): what a rule is chosen from.
    Calibration fills it from the held-out images, ``lineside eval`` from the scored split."""

    def __init__(self, threshold: float):
        self.candidates = sorted({*THRESHOLDS, threshold})
        self.truth: list[bool] = []
        self.regions: dict[float, list[int]] = {t: [] for t in self.candidates}
        self.false_regions: dict[float, list[int]] = {t: [] for t in self.candidates}
        self.trained: dict[float, list[int]] = {t: [] for t in self.candidates}

    def add(self, prob: np.ndarray, mask: np.ndarray) -> None:
        """One image that has a mask (a clean image's is all zero)."""
        self.truth.append(bool((mask > 0.5).any()))
        for t in self.candidates:
            largest, largest_false = largest_regions(prob, t, mask)
            self.regions[t].append(largest)
            self.false_regions[t].append(largest_false)

    def add_trained_clean(self, prob: np.ndarray) -> None:
        """One clean image the model trained on: the floor holds on it, no defect is counted."""
        for t in self.candidates:
            self.trained[t].append(largest_regions(prob, t)[0])

    def evidence(self, dice: dict[str, float | None]) -> Evidence:
        """The tally with the mean Dice over the defective images per threshold (keys as
        ``SegmentationScores.summary`` gives them, ``str(threshold)``)."""
        return Evidence(
            truth=list(self.truth),
            regions=self.regions,
            false_regions=self.false_regions,
            dice={t: dice.get(str(t)) for t in self.candidates},
            trained_clean=self.trained,
        )


def gather(
    maps: Iterable[tuple[np.ndarray, np.ndarray, int]],
    threshold: float,
    trained_clean: Iterable[np.ndarray] = (),
) -> Evidence:
    """Evidence from (probability map, mask, class id) per held-out image, and from the
    probability map of each clean image the model trained on, keeping no map in memory."""
    # the evaluation's own per-image scores, so held-out Dice is counted exactly as test Dice
    scores = SegmentationScores(threshold)
    tally = RegionTally(threshold)
    for prob, mask, class_id in maps:
        scores.add(prob, mask, class_id)
        tally.add(prob, mask)
    for prob in trained_clean:
        tally.add_trained_clean(prob)
    return tally.evidence(scores.summary()["overall"]["dice"])


def rules_at(threshold: float, evidence: Evidence) -> list[Rule]:
    """Every distinct rule at ``threshold``: the areas where the held-out result changes start one."""
    truth = np.asarray(evidence.truth, bool)
    largest = np.asarray(evidence.regions[threshold], np.int64)
    false = np.asarray(evidence.false_regions[threshold], np.int64)
    trained = np.asarray(evidence.trained_clean.get(threshold, []), np.int64)
    defects, clean = largest[truth], largest[~truth]
    # a false alarm of f px stops counting at f + 1, a defect of d px at d + 1
    starts = np.unique(np.concatenate([[1], false + 1, trained + 1, defects + 1]))
    rules = []
    for i, lo in enumerate(starts.tolist()):
        rules.append(
            Rule(
                threshold=threshold,
                lo=lo,
                hi=int(starts[i + 1]) - 1 if i + 1 < len(starts) else None,
                caught=int((defects >= lo).sum()),
                tnr_clean=float((clean < lo).mean()) if clean.size else None,
                tnr_all=float((false < lo).mean()) if false.size else None,
                tnr_trained=float((trained < lo).mean()) if trained.size else None,
            )
        )
    return rules


def roomy_rule(rules: list[Rule], evidence: Evidence, min_tnr: float) -> tuple[Rule, int] | None:
    """Among one threshold's ``rules`` (``rules_at``), the one whose area is ``AREA_ROOM`` times the
    smallest area that meets the TNR floor, and how many held-out defects clear that area by
    ``AREA_ROOM`` again; None when no area meets the floor there."""
    # the TNRs only grow with the area, so the first rule that meets the floor has its smallest area
    floor_area = next((r.lo for r in rules if r.tnr >= min_tnr), None)
    if floor_area is None:
        return None
    area = math.ceil(AREA_ROOM * floor_area)
    rule = next(r for r in reversed(rules) if r.lo <= area)
    truth = np.asarray(evidence.truth, bool)
    defects = np.asarray(evidence.regions[rule.threshold], np.int64)[truth]
    return replace(rule, chosen_area=area), int((defects >= AREA_ROOM * area).sum())


def choose_rule(evidence: Evidence, min_tnr: float, room: bool = True) -> tuple[Rule, list[str]]:
    """The rule of the module doc, and the warnings it earns (sentences for the user). Without
    ``room``, the rule that catches the most at the floor, however near its area lies to the
    regions on either side (what ``hindsight_rule`` asks of a scored split)."""

    def dice(r: Rule) -> float:
        value = evidence.dice.get(r.threshold)
        return -1.0 if value is None else value

    def nearest_half(r: Rule) -> tuple[float, float]:
        return -abs(r.threshold - 0.5), r.threshold

    def rank(r: Rule) -> tuple[float, ...]:
        return r.caught, dice(r), r.tnr, *nearest_half(r)

    by_threshold = [rules_at(t, evidence) for t in sorted(evidence.regions)]
    rules = [r for at_t in by_threshold for r in at_t]
    catching = [r for r in rules if r.caught]
    meeting = [r for r in catching if r.tnr >= min_tnr]
    roomy = []  # (rule, defects caught with room) per threshold whose rule catches one
    if room:
        pairs = (roomy_rule(at_t, evidence, min_tnr) for at_t in by_threshold)
        roomy = [pair for pair in pairs if pair and pair[0].caught]
    n_defective = sum(evidence.truth)
    warnings: list[str] = []
    if roomy:
        # the most caught with room first
        best = max(roomy, key=lambda pair: (pair[1], *rank(pair[0])))[0]
    elif meeting:
        best = max(meeting, key=rank)
    elif catching:
        best = max(catching, key=lambda r: (r.tnr, r.caught, dice(r), *nearest_half(r)))
        warnings.append(
            f"no rule meets the TNR floor of {_pct(min_tnr)} (eval.min_tnr): at every threshold, an area "
            f"that catches a held-out defect also lets false alarms through (best: TNR {_pct(best.tnr)} "
            f"at threshold {best.threshold:g}, min area {best.area} px); the model takes clean texture "
            "for defects"
        )
    else:
        # nothing catches a defect: keep the floor, and say that the line would pass every defect
        best = max((r for r in rules if r.tnr >= min_tnr), key=lambda r: (dice(r), r.tnr, *nearest_half(r)))
    if not n_defective:
        warnings.append(
            "no held-out image is defective, so the rule could not be chosen for catching defects; "
            "raise eval.calibration_fraction or add defective training images"
        )
    elif not best.caught:
        warnings.append(
            f"no held-out defect survives the chosen rule (threshold {best.threshold:g}, min area "
            f"{best.area} px): the line would pass every defective part"
        )
    elif best.caught / n_defective < MIN_TPR:
        warnings.append(
            f"held-out TPR {_pct(best.caught / n_defective)} is below {_pct(MIN_TPR)}: the chosen rule "
            f"(threshold {best.threshold:g}, min area {best.area} px) misses "
            f"{n_defective - best.caught} of {n_defective} held-out defective images"
        )
    return best, warnings


def hindsight_rule(evidence: Evidence, min_tnr: float) -> dict[str, Any] | None:
    """The rule that ``choose_rule`` picks on a scored split itself without room (the most caught
    at the floor, however near the area lies to the regions around it), with its TPR and TNR there:
    what the best rule could reach on these images, in hindsight (a leak as a rule for the line,
    a bound as a measure). A run's own rule that holds the floor on these images catches no more:
    what it catches less is what calibrating on the held-out images cost, and what this rule
    misses the model does not separate from clean texture at the floor (a rule under the floor
    may catch more, at the cost of the floor). None without both defective and clean images."""
    n_defective = sum(evidence.truth)
    if not n_defective or n_defective == len(evidence.truth):
        return None
    rule, _ = choose_rule(evidence, min_tnr, room=False)
    return {
        "threshold": rule.threshold,
        "min_defect_area": rule.area,
        "tpr": rule.caught / n_defective,
        "tnr": rule.tnr_clean,
        "dice": evidence.dice[rule.threshold],
        "min_tnr": min_tnr,
        "meets_tnr_floor": rule.tnr >= min_tnr,
    }


def choose_mask_threshold(
    maps: Iterable[tuple[np.ndarray, np.ndarray]], threshold: float, min_area: int
) -> tuple[float, dict[str, float]]:
    """The threshold the line draws its mask at (see the module doc), from (probability map, mask)
    of the held-out defective images, and the mean Dice of that mask per candidate (keys
    ``str(threshold)``). The rule's ``threshold`` stays unless another candidate's Dice is at
    least ``MIN_MASK_DICE_GAIN`` higher (the best one; on a tie, the one nearest the rule's)."""
    candidates = sorted({*THRESHOLDS, threshold})
    sums = dict.fromkeys(candidates, 0.0)
    images = 0
    for prob, mask in maps:
        images += 1
        kept, _ = keep_regions((prob > threshold).astype(np.uint8), min_area)
        for t in candidates:
            # a missed image draws nothing at any threshold: the same Dice for every candidate
            sums[t] += dice_iou(mask_regions(prob, kept, t, threshold), mask, 0.5)[0]
    if not images:
        return threshold, {}
    means = {t: sums[t] / images for t in candidates}
    best = max(candidates, key=lambda t: (means[t], t == threshold, -abs(t - threshold)))
    if means[best] - means[threshold] < MIN_MASK_DICE_GAIN:
        best = threshold
    return best, {str(t): means[t] for t in candidates}


def area_room_notes(rule: Rule) -> list[str]:
    """A sentence when the held-out regions on either side of the rule's area are less than
    ``MIN_AREA_ROOM`` apart: a rule on a knife-edge, which new images move. A caution, not a
    reason to call the model unfit: the held-out scores stand, their margin is what is small."""
    if not rule.caught or rule.hi is None or rule.lo <= 1 or rule.hi >= MIN_AREA_ROOM * (rule.lo - 1):
        return []
    return [
        f"the minimum area {rule.area} px has little room: held-out regions of {rule.lo - 1} px "
        f"and {rule.hi} px lie on either side of it, less than {MIN_AREA_ROOM:g}x apart, so on new "
        "images a region a little larger or smaller than those seen turns a pass into an alarm or "
        "a catch into a miss; more held-out images (eval.calibration_fraction), or a model whose "
        "false regions are smaller than its defects, give the rule room"
    ]


def wilson_interval(successes: int, n: int, z: float = CONFIDENCE_Z) -> tuple[float, float]:
    """The Wilson score interval of a rate seen as ``successes`` of ``n`` (95 % at z 1.96): unlike
    the plain normal interval it stays inside 0..1 and is not zero-width at 0 or n of n."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def tnr_evidence_notes(passed: int, clean: int, min_tnr: float) -> list[str]:
    """A sentence when ``clean`` held-out clean images are too few to show the TNR floor: the 95 %
    interval of the line's TNR on new parts reaches below it. A caution, not a warning: with
    the recipe's share of a few hundred training images this is the usual case, and it is why
    a test TNR a point or two under the floor is no surprise (docs/training.md, Calibration)."""
    if not clean:
        return []
    lo, hi = wilson_interval(passed, clean)
    if lo >= min_tnr:
        return []
    # no false alarm on n images shows the floor when n / (n + z^2) >= min_tnr
    needed = (
        f"; about {math.ceil(CONFIDENCE_Z**2 * min_tnr / (1 - min_tnr))} held-out clean images without "
        "a false alarm would show it (eval.calibration_fraction, or more clean training images)"
        if min_tnr < 1
        else ""
    )
    return [
        f"the held-out TNR {_pct(passed / clean)} rests on {clean} clean images: on new parts the "
        f"line's TNR may lie anywhere from {_pct(lo)} to {_pct(hi)} (95 % interval), so these "
        f"images do not show the floor of {_pct(min_tnr)}{needed}"
    ]


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def calibrate_maps(
    maps: Iterable[tuple[np.ndarray, np.ndarray, int]],
    cfg: dict[str, Any],
    trained_clean: Iterable[np.ndarray] = (),
    defective_again: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None = None,
) -> dict[str, Any]:
    """Pick ``threshold`` and ``min_defect_area`` from held-out (prob, mask, class id), and the
    probability maps of clean images the model trained on (the floor holds on them too); with
    the evidence. ``defective_again`` gives the held-out defective images' (prob, mask) once more,
    to pick ``mask_threshold`` under the chosen rule (without it, or with ``eval.mask_threshold``
    set, that one is not chosen)."""
    ev = cfg["eval"]
    evidence = gather(maps, ev["threshold"], trained_clean)
    rule, warnings = choose_rule(evidence, ev["min_tnr"])
    t, area = rule.threshold, rule.area
    mask_t, dice_line = ev.get("mask_threshold"), {}
    if mask_t is None:
        mask_t = t
        if defective_again is not None and rule.caught:
            mask_t, dice_line = choose_mask_threshold(defective_again(), t, area)
    n_trained = len(evidence.trained_clean[t])
    areas = evidence.regions[t]
    clean = [a for a, d in zip(areas, evidence.truth, strict=True) if not d]
    defective = [a for a, d in zip(areas, evidence.truth, strict=True) if d]
    result = {
        "images": len(areas),
        "defective": len(defective),
        "min_tnr": ev["min_tnr"],
        "threshold": t,
        "min_defect_area": area,
        "area_range": [rule.lo, rule.hi],
        "mask_threshold": mask_t,
        "dice": evidence.dice[t],
        # mean Dice of the line's mask over the held-out defective images, per mask threshold
        "dice_line_by_mask_threshold": dice_line,
        "tpr": rule.caught / len(defective) if defective else None,
        "tnr": rule.tnr_clean,
        "tnr_all_images": rule.tnr_all,
        "trained_clean_images": n_trained,
        "tnr_trained_clean": rule.tnr_trained,
        "meets_tnr_floor": rule.tnr >= ev["min_tnr"],
        "largest_clean_region": max(clean, default=0),
        "largest_false_region": max(evidence.false_regions[t], default=0),
        "smallest_defect_region": min(defective, default=0),
        "warnings": warnings,
        "notes": area_room_notes(rule),
    }
    if clean:
        passed = round(rule.tnr_clean * len(clean))
        result["tnr_interval"] = list(wilson_interval(passed, len(clean)))
        result["notes"] += tnr_evidence_notes(passed, len(clean), ev["min_tnr"])
    logger.info(
        "calibrated on %d held-out images (the TNR floor also on %d clean training images: %s): %s",
        result["images"],
        n_trained,
        "-" if rule.tnr_trained is None else _pct(rule.tnr_trained),
        result_line("held-out", result["dice"], result["tpr"], result["tnr"], t, area),
    )
    if dice_line and mask_t != t:
        logger.info(
            "calibration: the line draws its mask at %g (held-out Dice of the line's mask %.3f, "
            "at the rule's threshold %.3f)",
            mask_t,
            dice_line[str(mask_t)],
            dice_line[str(t)],
        )
    elif dice_line:
        logger.info(
            "calibration: the line draws its mask at the rule's threshold (held-out Dice of the "
            "line's mask %.3f; no other threshold gains %g)",
            dice_line[str(t)],
            MIN_MASK_DICE_GAIN,
        )
    for text in warnings:
        logger.warning("calibration: %s", text)
    for text in result["notes"]:
        logger.info("calibration: %s", text)
    return result


def calibrate(
    model, samples: list[Sample], cfg: dict[str, Any], trained_clean: list[Sample] | None = None
) -> dict[str, Any]:
    """Pick ``threshold`` and ``min_defect_area`` on the held-out ``samples``, the TNR floor
    holding on ``trained_clean`` too (see the module doc)."""
    from training.evaluate import predictions

    maps = ((prob, mask, class_id) for _, mask, prob, class_id in predictions(model, samples, cfg))
    trained = (prob for _, _, prob, _ in predictions(model, trained_clean, cfg)) if trained_clean else ()
    defective = [s for s in samples if s.defective]

    def defective_again():
        # predicted a second time rather than kept: a large held-out share would not fit in memory
        return ((prob, mask) for _, mask, prob, _ in predictions(model, defective, cfg))

    return calibrate_maps(maps, cfg, trained, defective_again)


def trained_clean_sample(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    """Up to ``limit`` (``eval.tnr_training_images``; 0: none) of the clean ``samples`` the model
    trains on, chosen at random for ``seed``, in their order: the TNR floor holds on them too."""
    clean = [i for i, s in enumerate(samples) if not s.defective]
    if limit <= 0:
        return []
    chosen = sorted(np.random.default_rng([seed, 11]).permutation(clean)[:limit].tolist())
    return [samples[i] for i in chosen]


def result_line(
    label: str, dice: float | None, tpr: float | None, tnr: float | None, threshold: float, min_area: int
) -> str:
    """``test: Dice 0.399 · TPR 31.7 % · TNR 98.3 % (threshold 0.05, min area 2828 px)``."""

    def num(value: float | None, pct: bool) -> str:
        if value is None:
            return "-"
        return _pct(value) if pct else f"{value:.3f}"

    return (
        f"{label}: Dice {num(dice, False)} · TPR {num(tpr, True)} · TNR {num(tnr, True)} "
        f"(threshold {threshold:g}, min area {min_area} px)"
    )


def hindsight_line(best: dict[str, Any] | None, split: str) -> str | None:
    """A split's hindsight rule (``hindsight_rule``) as the line under the run's own result, e.g.
    ``test in hindsight: Dice 0.456 · TPR 33.3 % · TNR 98.1 % (threshold 0.99, min area 8272 px)
    ...``; None without one."""
    if not best:
        return None
    floor = _pct(best["min_tnr"])
    reach = "the most any rule catches" if best["meets_tnr_floor"] else f"no rule meets the floor of {floor}"
    label = f"{split} in hindsight"
    return (
        result_line(label, best["dice"], best["tpr"], best["tnr"], best["threshold"], best["min_defect_area"])
        + f": the rule chosen on these {split} images themselves, {reach} at the TNR floor of "
        f"{floor}; a bound, not a rule for the line (what it misses is the model's to find)"
    )
