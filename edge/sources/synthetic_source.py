"""A synthetic camera: DAGM-like frames with defects injected at a known rate.

Each frame carries its ground truth (``truth.defective``) so tests and
benchmarks can score the decisions. Fault options let tests exercise the
camera's recovery paths the way a real camera fails: a read that stalls, a
disconnect, black or repeated frames.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from converter import synthetic
from edge.sources.base import CameraError, Captured, FrameSource


class SyntheticSource(FrameSource):
    """Renders frames with ``converter.synthetic.render``; deterministic per seed."""

    def __init__(
        self,
        *,
        size: int = 512,
        class_id: int = 1,
        defect_rate: float = 0.3,
        seed: int = 0,
        bank: int = 32,
        stall_at: int = -1,
        stall_s: float = 0.0,
        disconnect_at: int = -1,
        black_at: int = -1,
        repeat_at: int = -1,
        name: str = "synthetic",
    ) -> None:
        self.name = name
        self.size = size
        self.class_id = class_id
        self.defect_rate = defect_rate
        self.seed = seed
        #: frames pre-rendered per kind and cycled, so a camera can run at high fps
        self.bank = bank
        self.stall_at, self.stall_s = stall_at, stall_s
        self.disconnect_at = disconnect_at
        self.black_at, self.repeat_at = black_at, repeat_at
        self._rng = np.random.default_rng(seed)
        self._count = 0
        self._good: list[np.ndarray] = []
        self._bad: list[tuple[np.ndarray, dict[str, Any]]] = []
        self._last: np.ndarray | None = None
        self._last_index = -1
        self._faults_done: set[str] = set()

    def open(self) -> None:
        if not self._good:
            render_rng = np.random.default_rng(self.seed + 1)
            for _ in range(self.bank):
                image, _, _ = synthetic.render(render_rng, self.size, self.class_id, defective=False)
                self._good.append(image)
                image, _, info = synthetic.render(render_rng, self.size, self.class_id, defective=True)
                self._bad.append((image, {"kind": info.get("kind"), "bbox": info.get("bbox")}))

    def _once(self, fault: str, at: int) -> bool:
        if self._count == at and fault not in self._faults_done:
            self._faults_done.add(fault)
            return True
        return False

    def read(self) -> Captured | None:
        if self._once("stall", self.stall_at):
            time.sleep(self.stall_s)  # a capture that hangs; the camera's read deadline must catch it
        if self._once("disconnect", self.disconnect_at):
            msg = f"{self.name}: simulated disconnect at frame {self._count}"
            raise CameraError(msg)
        self._count += 1
        if self._once("black", self.black_at):
            image = np.zeros((self.size, self.size), np.uint8)
            return Captured(image, time.time(), {"defective": None, "fault": "black"})
        if self._once("repeat", self.repeat_at) and self._last is not None:
            return Captured(self._last, time.time(), {"defective": None, "fault": "repeat"})
        i = int(self._rng.integers(self.bank))
        # Never the same bank frame twice in a row: that is what a frozen camera looks like.
        if i == self._last_index:
            i = (i + 1) % self.bank
        self._last_index = i
        if self._rng.random() < self.defect_rate:
            image, info = self._bad[i]
            truth = {"defective": True, **info}
        else:
            image, truth = self._good[i], {"defective": False}
        self._last = image
        return Captured(image, time.time(), truth)

    def close(self) -> None:
        pass
