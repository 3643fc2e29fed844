"""Run a TensorRT engine plan: checked manifest first, then deserialize, then batches.

:class:`EngineRunner` is the TensorRT core shared by the line-side backend
(``edge/backends/trt/runner.py``) and ``lineside build-engine --verify``. Order of
``load()``: read the engine manifest, check the plan's sha256 against it, import
TensorRT/pycuda (install hint if missing), compare the manifest with this machine and
refuse a mismatch naming both sides, and only then deserialize: a plan from another
TensorRT version or GPU, or a changed plan, can crash the process inside
``deserialize_cuda_engine``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from converter.engine.cuda import DeviceBuffer, DeviceContext, PinnedBuffer, Stream, cuda_call
from converter.engine.machine import import_pycuda, import_tensorrt, probe_machine
from converter.engine.manifest import (
    EngineManifest,
    check_compatible,
    check_plan_hash,
    load_engine_manifest,
    warnings_for,
)
from converter.engine.profiles import BatchProfile, plan_chunks
from converter.errors import LinesideError

log = logging.getLogger(__name__)


class EngineLoadError(LinesideError, RuntimeError):
    """TensorRT could not deserialize or prepare an engine."""


class EngineRunner:
    """One deserialized engine with its pinned host buffers, device buffers and stream."""

    def __init__(self, plan_path: str | Path, *, onnx_sha256: str | None = None, device: int = 0) -> None:
        self.plan_path = Path(plan_path)
        #: when given, an engine built from another graph is refused too
        self.onnx_sha256 = onnx_sha256
        self.device = device
        self.manifest: EngineManifest | None = None
        self.profile: BatchProfile | None = None
        self.input_name = ""
        self.output_name = ""
        self._ctx: DeviceContext | None = None
        self._logger = None
        self._runtime = None
        self._engine = None
        self._context = None
        self._buffers: dict[str, tuple[PinnedBuffer, DeviceBuffer]] = {}
        self._stream: Stream | None = None

    def load(self) -> EngineRunner:
        """Check, deserialize and allocate; raises a LinesideError subclass on any failure."""
        if not self.plan_path.is_file():
            msg = f"{self.plan_path}: engine plan not found; build it with `lineside build-engine PACKAGE`"
            raise EngineLoadError(msg)
        manifest = load_engine_manifest(self.plan_path)
        check_plan_hash(manifest, self.plan_path)
        trt = import_tensorrt()
        import_pycuda()
        machine = probe_machine(self.device)
        check_compatible(manifest, machine, self.plan_path, self.onnx_sha256)
        for note in warnings_for(manifest, machine):
            log.warning("%s: %s", self.plan_path.name, note)
        self.manifest = manifest
        self._ctx = DeviceContext(self.device)
        try:
            with self._ctx:
                self._deserialize()
                self._allocate()
        except BaseException:
            self.free()
            raise
        log.info(
            "TensorRT %s engine %s loaded (batch %d-%d, %s)",
            trt.__version__,
            self.plan_path.name,
            self.profile.min,
            self.profile.max,
            manifest.precision,
        )
        return self

    def _deserialize(self) -> None:
        import tensorrt as trt

        # the logger and the runtime must outlive the engine they made
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self._engine is None:
            msg = (
                f"{self.plan_path}: TensorRT could not deserialize this plan (see its log above); rebuild it"
            )
            raise EngineLoadError(msg)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            msg = (
                f"{self.plan_path}: TensorRT could not create an execution context; is GPU memory too small?"
            )
            raise EngineLoadError(msg)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            msg = f"{self.plan_path}: expected one input and one output, got {inputs} and {outputs}"
            raise EngineLoadError(msg)
        self.input_name, self.output_name = inputs[0], outputs[0]
        low, opt, high = self._engine.get_tensor_profile_shape(self.input_name, 0)
        self.profile = BatchProfile(int(low[0]), int(opt[0]), int(high[0]))
        self._input_shape = tuple(int(d) for d in high)

    def _allocate(self) -> None:
        """Buffers for the profile's max batch, allocated once; smaller batches use a prefix."""
        import tensorrt as trt

        self._context.set_input_shape(self.input_name, self._input_shape)
        for name, shape in (
            (self.input_name, self._input_shape),
            (self.output_name, tuple(int(d) for d in self._context.get_tensor_shape(self.output_name))),
        ):
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            host = PinnedBuffer(shape, dtype)
            self._buffers[name] = (host, DeviceBuffer(host.array.nbytes))
            self._context.set_tensor_address(name, self._buffers[name][1].address)
        self._stream = Stream()

    @property
    def max_batch(self) -> int:
        return self.profile.max if self.profile else 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run ``batch`` (N, ...) in profile-sized chunks; returns the output for all N rows."""
        if self._context is None:
            msg = f"{self.plan_path}: engine used before load() or after free()"
            raise EngineLoadError(msg)
        host_in = self._buffers[self.input_name][0].array
        host_out, dev_out = self._buffers[self.output_name][0].array, self._buffers[self.output_name][1]
        dev_in = self._buffers[self.input_name][1]
        if batch.shape[1:] != host_in.shape[1:]:
            msg = f"{self.plan_path}: image shape {batch.shape[1:]} is not the engine's {host_in.shape[1:]}"
            raise EngineLoadError(msg)
        result = np.empty((len(batch), *host_out.shape[1:]), dtype=host_out.dtype)
        with self._ctx:
            for chunk in plan_chunks(len(batch), self.profile):
                rows = chunk.run_batch
                host_in[: chunk.count] = batch[chunk.start : chunk.start + chunk.count]
                host_in[chunk.count : rows] = 0  # pad up to the profile's min batch
                if not self._context.set_input_shape(self.input_name, (rows, *host_in.shape[1:])):
                    msg = f"{self.plan_path}: batch {rows} is outside the engine profile {self.profile}"
                    raise EngineLoadError(msg)
                self._stream.copy_to_device(dev_in, host_in[:rows])
                if not self._context.execute_async_v3(self._stream.handle):
                    msg = f"{self.plan_path}: TensorRT execute_async_v3 failed (see its log)"
                    raise EngineLoadError(msg)
                self._stream.copy_to_host(host_out[:rows], dev_out)
                self._stream.synchronize()
                result[chunk.start : chunk.start + chunk.count] = host_out[: chunk.count]
        return result

    def free(self) -> None:
        """Release the context, the engine and every buffer (safe to call twice)."""
        if self._ctx is None:
            return
        with self._ctx:
            for host, device in self._buffers.values():
                device.free()
                host.free()
            self._buffers.clear()
            if self._stream is not None:
                self._stream.free()
                self._stream = None
            # TensorRT objects must go before the context that owns their memory
            self._context = None
            self._engine = None
            self._runtime = None
            self._logger = None
        self._ctx.free()
        self._ctx = None


__all__ = ["EngineLoadError", "EngineRunner", "cuda_call"]
