"""OpenVINO backend: the package's graph compiled for an Intel CPU (in the precision it runs
fastest, behind its accuracy gate), iGPU or NPU. The OpenVINO work lives in
``converter.openvino_runtime`` (shared with ``lineside gate``); nothing imports OpenVINO
until ``activate()``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converter.errors import LinesideError
from edge.backends.base import Backend, BackendError, squeeze_probabilities


class OpenVINOBackend(Backend):
    """Runs an ONNX graph of a model package with OpenVINO on ``device`` in ``precision``."""

    name = "openvino"

    def __init__(self, graph: str | Path, device: str = "CPU", precision: str = "fp32", threads: int = 0):
        super().__init__()
        from converter.openvino_runtime import OpenVINORunner

        self.precision = precision
        self._runner = OpenVINORunner(graph, device, precision, threads)

    def activate_impl(self) -> None:
        try:
            self._runner.load()
        except LinesideError as exc:  # missing OpenVINO, absent device, graph that cannot compile
            raise BackendError(str(exc)) from None

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return squeeze_probabilities(self._runner.infer(batch))

    def deactivate_impl(self) -> None:
        self._runner.free()

    def describe(self) -> str:
        r = self._runner
        return f"openvino {r.device} {self.precision} ({r.graph.name}, threads={r.threads or 'all'})"
