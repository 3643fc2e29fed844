"""The frame ledger: every captured frame ends as exactly one result or one drop.

``captured = decided + dropped + in_flight`` per camera. A frame is named by
(camera, epoch, seq): the epoch is the start time of the camera process, so a
restarted camera's new seq 0 is a new frame, not a duplicate. ``captured``
comes from the camera's own counter; decided and dropped are counted per
frame, so a frame reported twice (decided by a worker that was then declared
dead) is counted once and the duplicate is reported, not added.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

#: sequence numbers remembered above the contiguous low-water mark before the
#: oldest are forgotten (bounds memory when a report is lost)
MAX_OPEN_SEQS = 200_000


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


@dataclass
class CameraLedger:
    decided: int = 0
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    dropped: collections.Counter = field(default_factory=collections.Counter)
    duplicates: int = 0
    epochs: dict[int, _EpochSeqs] = field(default_factory=dict)

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

    def mark(self, epoch: int, seq: int) -> bool:
        if self.epoch(epoch).mark(seq):
            return True
        self.duplicates += 1
        return False


class Ledger:
    """Per-camera ledgers and the line totals."""

    def __init__(self) -> None:
        self.cameras: dict[str, CameraLedger] = collections.defaultdict(CameraLedger)

    def captured(self, cam: str, epoch: int, count: int) -> None:
        seqs = self.cameras[cam].epoch(epoch)
        seqs.captured = max(seqs.captured, count)

    def decided(self, cam: str, epoch: int, seq: int, outcome: str) -> bool:
        led = self.cameras[cam]
        if not led.mark(epoch, seq):
            return False
        led.decided += 1
        led.outcomes[outcome] += 1
        return True

    def dropped(self, cam: str, epoch: int, seq: int, reason: str) -> bool:
        led = self.cameras[cam]
        if not led.mark(epoch, seq):
            return False
        led.dropped[reason] += 1
        return True

    def totals(self) -> dict[str, int]:
        out: collections.Counter = collections.Counter()
        for led in self.cameras.values():
            out["captured"] += led.captured
            out["decided"] += led.decided
            out["dropped"] += led.dropped_total
            out["in_flight"] += led.in_flight
            out["duplicates"] += led.duplicates
            for k, v in led.outcomes.items():
                out[k] += v
        return dict(out)

    def snapshot(self) -> dict[str, dict]:
        return {
            cam: {
                "captured": led.captured,
                "decided": led.decided,
                "outcomes": dict(led.outcomes),
                "dropped": dict(led.dropped),
                "in_flight": led.in_flight,
                "duplicates": led.duplicates,
                "epochs": len(led.epochs),
            }
            for cam, led in self.cameras.items()
        }
