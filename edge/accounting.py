"""The frame ledger: every captured frame ends as exactly one result or one drop.

``captured = decided + dropped + in_flight`` per camera. A frame is named by
(camera, epoch, seq): the epoch is the start time of the camera process, so a
restarted camera's new seq 0 is a new frame, not a duplicate. ``captured``
comes from the camera's own counter; decided and dropped are counted per
frame, so a frame reported twice is counted once.

A drop that only says a frame was given up for lost (its worker, router or camera died;
the line stopped) can be overtaken by the truth: when that frame's decision arrives
after all (a worker that was only slow), the decision replaces the drop, and the drop
count goes down. A drop that was a choice (superseded, too old, buffer full) is final.

The ledger can be written to and read from a JSON snapshot, so a restarted collector
carries on with the same books instead of an empty one.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

#: sequence numbers remembered above the contiguous low-water mark before the
#: oldest are forgotten (bounds memory when a report is lost)
MAX_OPEN_SEQS = 200_000
#: drops that mean "given up for lost": a late decision replaces them
REVOCABLE_DROPS = frozenset(
    {"worker_lost", "worker_exit", "router_lost", "collector_lost", "camera_lost", "shutdown"}
)
#: revocable drops remembered per camera, newest first kept
MAX_REVOCABLE = 50_000

NEW, LATE, DUPLICATE = "new", "late", "duplicate"


@dataclass
class _EpochSeqs:
    """Which seqs of one camera process are accounted for, in O(open frames) memory."""

    captured: int = 0
    #: every seq below this is accounted for
    low: int = 0
    #: accounted seqs at or above ``low``
    above: set[int] = field(default_factory=set)

    def mark(self, seq: int) -> bool:
        if seq < self.low or seq in self.above:
            return False
        self.above.add(seq)
        while self.low in self.above:
            self.above.discard(self.low)
            self.low += 1
        if len(self.above) > MAX_OPEN_SEQS:
            self.low = min(self.above)
        # A frame can be reported before the camera's counter arrives.
        self.captured = max(self.captured, seq + 1)
        return True

    def unaccounted(self, below: int | None = None) -> list[int]:
        """Seqs captured (and below ``below``) that are neither decided nor dropped yet."""
        end = self.captured if below is None else min(self.captured, below)
        return [s for s in range(self.low, end) if s not in self.above]


@dataclass
class CameraLedger:
    decided: int = 0
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    dropped: collections.Counter = field(default_factory=collections.Counter)
    duplicates: int = 0
    #: decisions that arrived after their frame was counted lost, and replaced that drop
    late: int = 0
    epochs: dict[int, _EpochSeqs] = field(default_factory=dict)
    #: (epoch, seq) -> reason, for drops a late decision may still replace
    revocable: collections.OrderedDict = field(default_factory=collections.OrderedDict)

    @property
    def captured(self) -> int:
        return sum(e.captured for e in self.epochs.values())

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def in_flight(self) -> int:
        return self.captured - self.decided - self.dropped_total

    def epoch(self, epoch: int) -> _EpochSeqs:
        seqs = self.epochs.get(epoch)
        if seqs is None:
            seqs = self.epochs[epoch] = _EpochSeqs()
        return seqs


class Ledger:
    """Per-camera ledgers and the line totals."""

    def __init__(self) -> None:
        self.cameras: dict[str, CameraLedger] = collections.defaultdict(CameraLedger)

    def captured(self, cam: str, epoch: int, count: int) -> None:
        seqs = self.cameras[cam].epoch(epoch)
        seqs.captured = max(seqs.captured, count)

    def decided(self, cam: str, epoch: int, seq: int, outcome: str) -> str:
        """Count a decision: ``NEW``, ``LATE`` (it replaced a drop, which is undone) or
        ``DUPLICATE`` (already decided, or dropped for good: not counted)."""
        led = self.cameras[cam]
        if led.epoch(epoch).mark(seq):
            status = NEW
        else:
            reason = led.revocable.pop((epoch, seq), None)
            if reason is None:
                led.duplicates += 1
                return DUPLICATE
            led.dropped[reason] -= 1
            if not led.dropped[reason]:
                del led.dropped[reason]
            led.late += 1
            status = LATE
        led.decided += 1
        led.outcomes[outcome] += 1
        return status

    def dropped(self, cam: str, epoch: int, seq: int, reason: str) -> bool:
        led = self.cameras[cam]
        if not led.epoch(epoch).mark(seq):
            led.duplicates += 1
            return False
        led.dropped[reason] += 1
        if reason in REVOCABLE_DROPS:
            led.revocable[(epoch, seq)] = reason
            if len(led.revocable) > MAX_REVOCABLE:
                led.revocable.popitem(last=False)
        return True

    def unaccounted(self, cam: str, epoch: int, below: int | None = None) -> list[int]:
        led = self.cameras.get(cam)
        if led is None or epoch not in led.epochs:
            return []
        return led.epochs[epoch].unaccounted(below)

    def totals(self) -> dict[str, Any]:
        """The line's counts; every key is present, zero or not."""
        out: dict[str, Any] = dict.fromkeys(
            (
                "captured",
                "decided",
                "dropped",
                "in_flight",
                "PASS",
                "FAIL",
                "NO_DECISION",
                "duplicates",
                "late",
            ),
            0,
        )
        by_reason: collections.Counter = collections.Counter()
        for led in self.cameras.values():
            row = self._row(led)
            for key in out:
                out[key] += row[key]
            by_reason.update(led.dropped)
        out["dropped_by_reason"] = dict(by_reason)
        return out

    @staticmethod
    def _row(led: CameraLedger) -> dict[str, Any]:
        return {
            "captured": led.captured,
            "decided": led.decided,
            "dropped": led.dropped_total,
            "in_flight": led.in_flight,
            "PASS": led.outcomes["PASS"],
            "FAIL": led.outcomes["FAIL"],
            "NO_DECISION": led.outcomes["NO_DECISION"],
            "duplicates": led.duplicates,
            "late": led.late,
            "dropped_by_reason": dict(led.dropped),
            "epochs": len(led.epochs),
        }

    def snapshot(self) -> dict[str, dict]:
        """Per camera: the same counts as ``totals``, plus how many camera processes (epochs)."""
        return {cam: self._row(led) for cam, led in self.cameras.items()}

    # -- persistence (a restarted collector carries on with the same books) -------------------
    def to_json(self) -> dict[str, Any]:
        return {
            cam: {
                "decided": led.decided,
                "outcomes": dict(led.outcomes),
                "dropped": dict(led.dropped),
                "duplicates": led.duplicates,
                "late": led.late,
                "epochs": {
                    str(e): {"captured": s.captured, "low": s.low, "above": sorted(s.above)}
                    for e, s in led.epochs.items()
                },
                "revocable": [[e, s, r] for (e, s), r in led.revocable.items()],
            }
            for cam, led in self.cameras.items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        ledger = cls()
        for cam, d in data.items():
            led = ledger.cameras[cam]
            led.decided, led.duplicates, led.late = d["decided"], d["duplicates"], d.get("late", 0)
            led.outcomes.update(d["outcomes"])
            led.dropped.update(d["dropped"])
            for e, s in d["epochs"].items():
                led.epochs[int(e)] = _EpochSeqs(s["captured"], s["low"], set(s["above"]))
            for e, s, r in d.get("revocable", []):
                led.revocable[(e, s)] = r
        return ledger
