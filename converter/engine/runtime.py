"""Run a TensorRT engine plan: checked manifest first, then deserialize, then batches.

:class:`EngineRunner` is the TensorRT core shared by the line-side backend
(``edge/backends/trt.py``) and ``lineside build-engine --verify``. Order of
``load()``: read the engine manifest, check the plan's sha256 against it, import
TensorRT/pycuda (install hint if missing), compare the manifest with this machine and
refuse a mismatch naming both sides, and only then deserialize: a plan from another
TensorRT version or GPU, or a changed plan, can crash the process inside
``deserialize_cuda_engine``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from converter.engine.cuda import DeviceBuffer, DeviceContext, PinnedBuffer, Stream, cuda_call
from converter.engine.machine import import_pycuda, import_tensorrt, probe_machine, trt_object
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


#: I/O dtypes this runner feeds and reads: float32 as the line normalizes, float16 cast on the host
INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
#: input buffers offered to the caller (``input_buffer``): one is filled while the other is read
OFFERED_SLOTS = 2


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
        self.input_dtype = np.dtype(np.float32)
        self.output_dtype = np.dtype(np.float32)
        self._input_shape: tuple[int, ...] = ()
        self._ctx: DeviceContext | None = None
        self._logger = None
        self._runtime = None
        self._engine = None
        self._context = None
        self._buffers: dict[str, tuple[PinnedBuffer, DeviceBuffer]] = {}
        #: pinned float32 input buffers a caller may normalize straight into (``input_buffer``)
        self._offered: list[PinnedBuffer] = []
        self._stream: Stream | None = None
        #: `lineside bench` sets this to split each ``infer`` into H2D, compute and D2H (as
        #: trtexec does): the stream is then synchronized after each stage, which serializes
        #: copies and compute, so the line leaves it off
        self.time_stages = False
        #: seconds per stage of the last ``infer`` (summed over its chunks) when ``time_stages``
        self.stage_seconds: dict[str, float] = {}
        #: the output of the last ``infer``, reused (valid until the next call)
        self._result: np.ndarray | None = None

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
        self._runtime = trt_object("Runtime", trt.Runtime, self._logger)
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
        self.input_dtype = self._io_dtype(self.input_name, INPUT_DTYPES, "input")
        self.output_dtype = self._io_dtype(self.output_name, OUTPUT_DTYPES, "output")
        low, opt, high = self._engine.get_tensor_profile_shape(self.input_name, 0)
        self.profile = BatchProfile(int(low[0]), int(opt[0]), int(high[0]))
        self._input_shape = tuple(int(d) for d in high)

    def _io_dtype(self, name: str, allowed: tuple[np.dtype, ...], role: str) -> np.dtype:
        """The numpy dtype of I/O tensor ``name``, refused at load unless this runner feeds it:
        the line hands normalized float32 images and reads float probabilities, so an engine
        with uint8 I/O (built from the folded ``model.uint8.onnx``) or int8/bf16 I/O would be
        fed bytes it reads as something else."""
        import tensorrt as trt

        trt_dtype = self._engine.get_tensor_dtype(name)
        try:
            dtype = np.dtype(trt.nptype(trt_dtype))
        except TypeError:  # bf16, fp8, int4: no numpy equivalent
            dtype = None
        if dtype in allowed:
            return dtype
        shown = dtype.name if dtype is not None else str(trt_dtype)
        msg = (
            f"{self.plan_path}: the engine's {role} {name!r} is {shown}; the line feeds float32 images and "
            f"reads float32/float16 probabilities; rebuild it from model.onnx or model.fp16.onnx "
            f"(`lineside build-engine PACKAGE --precision fp16`), not from the folded uint8 graph"
        )
        raise EngineLoadError(msg)

    def _allocate(self) -> None:
        """Buffers for the profile's max batch, allocated once; smaller batches use a prefix."""
        in_shape = self._input_shape
        out_at_max = self._output_shape(in_shape)
        # the output batch must follow the input batch (checked once here, not per chunk)
        out_at_min = self._output_shape((self.profile.min, *in_shape[1:]))
        if out_at_max[0] != in_shape[0] or out_at_min[0] != self.profile.min:
            msg = (
                f"{self.plan_path}: the engine's output batch does not follow its input batch (input "
                f"{in_shape[0]} gives {out_at_max[0]}, {self.profile.min} gives {out_at_min[0]}); re-export"
            )
            raise EngineLoadError(msg)
        self._context.set_input_shape(self.input_name, in_shape)
        for name, shape, dtype in (
            (self.input_name, in_shape, self.input_dtype),
            (self.output_name, out_at_max, self.output_dtype),
        ):
            host = PinnedBuffer(shape, dtype)
            self._buffers[name] = (host, DeviceBuffer(host.array.nbytes))
            if not self._context.set_tensor_address(name, self._buffers[name][1].address):
                msg = f"{self.plan_path}: TensorRT refused the device address of {name!r}"
                raise EngineLoadError(msg)
        if self.input_dtype == np.float32:
            self._offered = [PinnedBuffer(in_shape, np.float32) for _ in range(OFFERED_SLOTS)]
        self._result = np.empty(out_at_max, np.float32)
        self._stream = Stream()

    def _output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if not self._context.set_input_shape(self.input_name, input_shape):
            msg = f"{self.plan_path}: TensorRT refused input shape {list(input_shape)} of its own profile"
            raise EngineLoadError(msg)
        return tuple(int(d) for d in self._context.get_tensor_shape(self.output_name))

    def input_buffer(self, rows: int, slot: int = 0) -> np.ndarray | None:
        """A pinned float32 input view of ``rows`` rows to normalize into, so ``infer`` copies
        it to the GPU without a host copy first; None when the engine does not take float32
        or ``rows`` is more than its max batch. Slots alternate: the caller may fill one while
        the engine reads the other; a slot's view stays valid until ``free()``."""
        if not self._offered or not 0 < rows <= self.max_batch:
            return None
        return self._offered[slot % len(self._offered)].array[:rows]

    def _offered_slot(self, batch: np.ndarray) -> np.ndarray | None:
        """The offered buffer ``batch`` is the head of, if any (then no host copy is needed)."""
        for buffer in self._offered:
            host = buffer.array
            if (
                batch.dtype == host.dtype
                and batch.shape[1:] == host.shape[1:]
                and len(batch) <= len(host)
                and batch.flags.c_contiguous
                and batch.__array_interface__["data"][0] == host.__array_interface__["data"][0]
            ):
                return host
        return None

    @property
    def max_batch(self) -> int:
        return self.profile.max if self.profile else 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run ``batch`` (N, ...) in profile-sized chunks; returns the float32 output for all N
        rows, in an array reused by the next call (copy it to keep it longer).

        A batch in an ``input_buffer`` view goes to the GPU from there; any other is copied
        (and cast to the engine's input dtype) into the pinned staging buffer first.
        """
        if self._context is None:
            msg = f"{self.plan_path}: engine used before load() or after free()"
            raise EngineLoadError(msg)
        staging, dev_in = self._buffers[self.input_name]
        host_out, dev_out = self._buffers[self.output_name][0].array, self._buffers[self.output_name][1]
        want = staging.array.shape[1:]
        if batch.shape[1:] != want:
            msg = f"{self.plan_path}: image shape {batch.shape[1:]} is not the engine's {want}"
            raise EngineLoadError(msg)
        offered = self._offered_slot(batch)
        if len(batch) > len(self._result):
            self._result = np.empty((len(batch), *self._result.shape[1:]), np.float32)
        result = self._result[: len(batch)]
        timed = self.time_stages
        stages = dict.fromkeys(("h2d", "compute", "d2h"), 0.0)
        with self._ctx:
            for chunk in plan_chunks(len(batch), self.profile):
                rows = chunk.run_batch
                if offered is not None and chunk.start == 0:
                    host_in = offered  # the caller normalized into pinned memory: no host copy
                else:
                    host_in = staging.array
                    np.copyto(host_in[: chunk.count], batch[chunk.start : chunk.start + chunk.count])
                host_in[chunk.count : rows] = 0  # pad up to the profile's min batch
                if not self._context.set_input_shape(self.input_name, (rows, *host_in.shape[1:])):
                    msg = f"{self.plan_path}: batch {rows} is outside the engine profile {self.profile}"
                    raise EngineLoadError(msg)
                t0 = time.perf_counter()
                self._stream.copy_to_device(dev_in, host_in[:rows])
                if timed:
                    self._stream.synchronize()
                    t1 = time.perf_counter()
                if not self._context.execute_async_v3(self._stream.handle):
                    msg = f"{self.plan_path}: TensorRT execute_async_v3 failed (see its log)"
                    raise EngineLoadError(msg)
                if timed:
                    self._stream.synchronize()
                    t2 = time.perf_counter()
                self._stream.copy_to_host(host_out[:rows], dev_out)
                self._stream.synchronize()
                if timed:
                    stages["h2d"] += t1 - t0
                    stages["compute"] += t2 - t1
                    stages["d2h"] += time.perf_counter() - t2
                result[chunk.start : chunk.start + chunk.count] = host_out[: chunk.count]
        if timed:
            self.stage_seconds = stages
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
            for host in self._offered:
                host.free()
            self._offered = []
            self._result = None
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
