"""TensorRT backend: a checked engine plan on the GPU (TensorRT 10/11 + pycuda).

The TensorRT work lives in ``converter.engine.runtime.EngineRunner`` (shared with
``lineside build-engine --verify``): engine manifest checked before deserializing, pinned
host buffers, one CUDA stream, async copies, input shape set per batch within the
profile, tensor-name API (``set_tensor_address`` / ``execute_async_v3``), every CUDA call
through one checker, explicit ``free()``. This class adapts it to the Backend interface.
Nothing here imports TensorRT or pycuda until ``activate()``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converter.errors import LinesideError
from edge.backends.base import Backend, BackendError, squeeze_probabilities


class TensorRTBackend(Backend):
    """Runs a TensorRT engine plan of a model package on one GPU."""

    name = "tensorrt"
    overlaps_host_work = True

    def __init__(self, plan_path: str | Path, *, onnx_sha256: str | None = None, device: int = 0) -> None:
        super().__init__()
        self.plan_path = Path(plan_path)
        #: the package graph's hash: an engine built from an older export is refused
        self.onnx_sha256 = onnx_sha256
        self.device = device
        self._runner = None

    @classmethod
    def for_package(cls, package, plan_path: str | Path, device: int = 0) -> TensorRTBackend:
        """A backend for ``plan_path`` that also refuses an engine built from a stale ONNX graph."""
        from converter.engine.manifest import load_engine_manifest
        from converter.package import sha256_file

        try:
            graph = package.root / load_engine_manifest(plan_path).onnx_file
        except LinesideError as exc:
            raise BackendError(str(exc)) from None
        return cls(plan_path, onnx_sha256=sha256_file(graph) if graph.is_file() else "missing", device=device)

    def activate_impl(self) -> None:
        from converter.engine.runtime import EngineRunner

        runner = EngineRunner(self.plan_path, onnx_sha256=self.onnx_sha256, device=self.device)
        try:
            runner.load()
        except LinesideError as exc:  # mismatch, missing TensorRT, CUDA error: one line for the worker
            raise BackendError(str(exc)) from None
        self._runner = runner
        self.max_batch = runner.max_batch

    def input_buffer(self, rows: int, slot: int = 0) -> np.ndarray | None:
        """The engine's pinned input view (see EngineRunner.input_buffer), or None."""
        return self._runner.input_buffer(rows, slot) if self._runner is not None else None

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        try:
            # as given: a view of input_buffer goes to the GPU without a host copy, anything
            # else is copied (and cast to the engine's input dtype) into pinned memory there
            out = self._runner.infer(batch)
        except LinesideError as exc:
            raise BackendError(str(exc)) from None
        return squeeze_probabilities(out)

    def deactivate_impl(self) -> None:
        if self._runner is not None:
            self.free()

    def free(self) -> None:
        """Release the engine, its buffers and the CUDA context now (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.free()

    def describe(self) -> str:
        manifest = self._runner.manifest if self._runner is not None else None
        if manifest is None:
            return f"tensorrt ({self.plan_path.name}, not loaded)"
        return (
            f"tensorrt {manifest.tensorrt_version} on {manifest.gpu_name} ({self.plan_path.name}, "
            f"{manifest.precision}, batch <= {self.max_batch})"
        )
