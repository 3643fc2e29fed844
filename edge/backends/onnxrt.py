"""ONNX Runtime backend: the embedded CPU default on boxes without a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge.backends.base import Backend, BackendError, squeeze_probabilities


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX graph with onnxruntime's CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, threads: int = 0) -> None:
        super().__init__()
        self.onnx_path = Path(onnx_path)
        #: intra-op threads; 0 lets onnxruntime use every core
        self.threads = threads
        self._session = None
        self._input_name = ""

    def activate_impl(self) -> None:
        import onnxruntime as ort

        if not self.onnx_path.is_file():
            msg = f"{self.onnx_path}: ONNX graph not found; check the model package path"
            raise BackendError(msg)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        # One worker process per core group: inter-op parallelism only adds contention.
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Batches vary in size (a deadline sends what has arrived), and the per-shape memory
        # patterns kept growing with each new size: the soak test measured +9 to +25 MiB/min
        # with them, +2 to +5 without, at the same img/s. (Turning the arena off as well
        # halved the throughput at batch 4.)
        options.enable_mem_pattern = False
        # Idle intra-op threads sleep instead of spinning: the line's workers share the cores with
        # each other and the cameras, and spinning threads took CPU from them. Measured on 2 busy
        # cores at batch 8 (docs/converter.md): FP32 1.05-1.08x, the INT8 graph (many short ops)
        # 1.05-1.38x as fast.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                os.fspath(self.onnx_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            msg = f"{self.onnx_path}: onnxruntime cannot load this graph ({exc})"
            raise BackendError(msg) from None
        self._input_name = self._session.get_inputs()[0].name

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self._session.run(None, {self._input_name: batch})[:1]
        return squeeze_probabilities(out)

    def deactivate_impl(self) -> None:
        self._session = None

    def describe(self) -> str:
        return f"onnxruntime CPU ({self.onnx_path.name}, threads={self.threads or 'all'})"
