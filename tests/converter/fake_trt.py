"""Stand-ins for the tensorrt and pycuda.driver modules, for plain-Python tests of our
control flow (order of checks, buffers, chunking, padding, freeing) without a GPU.

They model only what converter/engine uses, with the same names and return types as
the real APIs; "device memory" is a dict of numpy arrays and the "engine" doubles its input.
They prove nothing about TensorRT itself: tests marked ``gpu`` do that.
"""

from __future__ import annotations

import itertools
import json
import threading
import types

import numpy as np

PLAN_BYTES = b"fake-engine"


def make_pycuda() -> tuple[types.ModuleType, types.ModuleType, dict[int, np.ndarray]]:
    """pycuda.driver with pycuda's context bookkeeping (src/cpp/cuda.hpp): per thread, pycuda's
    own context stack and CUDA's (``driver.stacks()``), ``push``/``pop``/``get_current`` and
    ``detach`` as pycuda does them (``cuDevicePrimaryCtxRelease`` never pops; a detach of a
    context that is not current pushes it first), retain/release counts in ``driver.counts``,
    and the fake Error on a pop of an empty stack or a call that needs a current context."""
    memory: dict[int, np.ndarray] = {}
    addresses = itertools.count(0x1000, 0x1000)
    driver = types.ModuleType("pycuda.driver")
    local = threading.local()
    counts = {"retain": 0, "release": 0}
    #: the host arrays of every host-to-device copy, newest last
    htod_sources: list[np.ndarray] = []

    class Error(Exception):
        pass

    def stacks() -> tuple[list, list]:
        """(pycuda's context stack, CUDA's) of the calling thread."""
        if not hasattr(local, "pycuda"):
            local.pycuda, local.cuda = [], []
        return local.pycuda, local.cuda

    def current(except_=None):
        ours, _ = stacks()
        while ours:
            top = ours[-1]
            if top is not except_ and top.valid:
                return top
            ours.pop()  # pycuda drops dead entries from its own stack only
        return None

    def prepare_context_switch() -> None:
        ours, cuda = stacks()
        if ours:
            if not cuda:
                raise Error("cuCtxPopCurrent failed: invalid context")
            cuda.pop()

    def need_context(what: str) -> None:
        if current() is None:
            raise Error(f"{what}: no currently active context?")

    class HostAllocation(bytearray):
        freed = False

        def free(self) -> None:
            self.freed = True

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            need_context("cuMemAlloc")
            self.address = next(addresses)
            memory[self.address] = np.zeros(nbytes, np.uint8)

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            need_context("cuMemFree")
            memory.pop(self.address)

    class Context:
        """pycuda's context object (a primary context when made by retain_primary_context)."""

        def __init__(self, device: int) -> None:
            self.handle = ("primary", device)
            self.valid = True
            self.thread = threading.get_ident()
            counts["retain"] += 1

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Context) and other.handle == self.handle

        __hash__ = object.__hash__

        def push(self) -> None:
            prepare_context_switch()
            ours, cuda = stacks()
            cuda.append(self.handle)
            ours.append(self)

        @staticmethod
        def pop() -> None:
            prepare_context_switch()
            ours, cuda = stacks()
            if not ours:
                raise Error("context::pop failed: cannot pop non-current context")
            ours.pop()
            top = current()
            if top is not None:
                cuda.append(top.handle)

        @staticmethod
        def get_current():
            return current()

        def detach(self) -> None:
            if not self.valid:
                raise Error("context::detach failed: cannot detach from invalid context")
            _, cuda = stacks()
            active = current() is self
            if active:
                counts["release"] += 1  # cuDevicePrimaryCtxRelease: no pop
            elif self.thread == threading.get_ident():
                cuda.append(self.handle)  # cuCtxPushCurrent, then the release, which does not pop
                counts["release"] += 1
            self.valid = False
            if active:
                top = current(except_=self)
                if top is not None:
                    cuda.append(top.handle)

    class Device:
        @staticmethod
        def count() -> int:
            return 1

        def __init__(self, index: int) -> None:
            self.index = index

        def name(self) -> str:
            return "NVIDIA L4"

        def compute_capability(self) -> tuple[int, int]:
            return (8, 9)

        def retain_primary_context(self) -> Context:
            return Context(self.index)

    class Stream:
        handle = 7

        def __init__(self) -> None:
            need_context("cuStreamCreate")

        def synchronize(self) -> None:
            pass

    def pagelocked_empty(shape, dtype):
        need_context("cuMemHostAlloc")
        dtype = np.dtype(dtype)
        return np.ndarray(shape, dtype=dtype, buffer=HostAllocation(int(np.prod(shape)) * dtype.itemsize))

    def memcpy_htod_async(dest, src, stream=None) -> None:
        need_context("cuMemcpyHtoDAsync")
        htod_sources.append(src)
        flat = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
        memory[int(dest)][: flat.size] = flat

    def memcpy_dtoh_async(dest, src, stream=None) -> None:
        need_context("cuMemcpyDtoHAsync")
        flat = dest.reshape(-1).view(np.uint8)
        flat[:] = memory[int(src)][: flat.size]

    driver.__dict__.update(
        Error=Error,
        init=lambda: None,
        Device=Device,
        Context=Context,
        Stream=Stream,
        pagelocked_empty=pagelocked_empty,
        mem_alloc=DeviceAllocation,
        memcpy_htod_async=memcpy_htod_async,
        memcpy_dtoh_async=memcpy_dtoh_async,
        get_version=lambda: (12, 9, 0),
        get_driver_version=lambda: 12090,
        stacks=stacks,
        counts=counts,
        htod_sources=htod_sources,
    )
    package = types.ModuleType("pycuda")
    package.driver = driver
    return package, driver, memory


#: what pybind11 raises when TensorRT's factory cannot start CUDA (driver too old for the wheel)
NULLPTR = "pybind11::init(): factory function returned nullptr"


def make_tensorrt(
    memory: dict[int, np.ndarray],
    profile=((2, 8, 8, 1), (4, 8, 8, 1), (4, 8, 8, 1)),
    compute=lambda x: x * 2,
    *,
    input_dtype=np.float32,
    output_dtype=np.float32,
    runtime_error: str | None = None,
    output_batch: int | None = None,
):
    """``input_dtype``/``output_dtype``: what the engine's I/O tensors report (numpy types, as
    ``trt.nptype`` maps them); ``runtime_error``: ``trt.Runtime`` raises TypeError with it;
    ``output_batch``: the output's batch whatever the input's (a graph with a fixed batch)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.16.1.11"
    trt.executions = []
    dtypes = {"image": np.dtype(input_dtype), "probability": np.dtype(output_dtype)}

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class TensorIOMode:
        INPUT, OUTPUT = 0, 1

    class ExecutionContext:
        def __init__(self) -> None:
            self.shapes = {"image": profile[2]}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape) -> bool:
            shape = tuple(shape)
            if not all(lo <= s <= hi for lo, s, hi in zip(profile[0], shape, profile[2], strict=True)):
                return False
            self.shapes["image"] = shape
            return True

        def get_tensor_shape(self, name: str):
            shape = list(self.shapes["image"])
            if name == "probability" and output_batch is not None:
                shape[0] = output_batch
            return shape

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            shape = self.shapes["image"]
            n = int(np.prod(shape))
            size_in, size_out = n * dtypes["image"].itemsize, n * dtypes["probability"].itemsize
            x = memory[self.addresses["image"]][:size_in].view(dtypes["image"]).reshape(shape)
            y = np.ascontiguousarray(compute(x.astype(np.float32)), dtype=dtypes["probability"])
            memory[self.addresses["probability"]][:size_out] = y.reshape(-1).view(np.uint8)
            trt.executions.append(shape[0])
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, index: int) -> str:
            return ("image", "probability")[index]

        def get_tensor_mode(self, name: str) -> int:
            return TensorIOMode.INPUT if name == "image" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str):
            return dtypes[name].type

        def get_tensor_profile_shape(self, name: str, index: int):
            return [list(p) for p in profile]

        def create_execution_context(self) -> ExecutionContext:
            return ExecutionContext()

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            if runtime_error is not None:
                raise TypeError(runtime_error)
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            trt.deserialized = True
            return Engine() if data == PLAN_BYTES else None

    trt.__dict__.update(
        Logger=Logger,
        TensorIOMode=TensorIOMode,
        Runtime=Runtime,
        nptype=lambda dtype: dtype,
        deserialized=False,
    )
    return trt


#: what the fake inspector returns by default: DETAILED layer information of an FP32 engine
FP32_LAYERS = {
    "Layers": [
        {
            "Name": "conv1",
            "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "image", "Format/Datatype": "Row major linear FP32"}],
            "Outputs": [{"Name": "c1", "Format/Datatype": "Row major linear FP32"}],
        },
        {
            "Name": "head",
            "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "c1", "Format/Datatype": "Row major linear FP32"}],
            "Outputs": [{"Name": "probability", "Format/Datatype": "Row major linear FP32"}],
        },
    ],
    "Bindings": ["image", "probability"],
}


def _entries(data: bytes) -> set[bytes]:
    return {e for e in bytes(data).split(b",") if e}


def add_builder(
    trt: types.ModuleType,
    *,
    has_fp16_flag: bool = True,
    parse_ok: bool = True,
    unreadable_caches: tuple[bytes, ...] = (),
    foreign_caches: tuple[bytes, ...] = (),
    no_cache_after_build: bool = False,
    combine_ok: bool = True,
    layer_info: dict | list | str | None = None,
    on_build=None,
) -> dict:
    """Builder-side stand-ins; returns a dict recording what the build asked for.

    A timing cache is a set of entries serialized as ``b"a,b"``; a build adds ``b"built"``.
    ``create_timing_cache`` returns None for a blob in ``unreadable_caches`` (another
    TensorRT version), ``set_timing_cache(..., ignore_mismatch=False)`` returns False for
    one in ``foreign_caches`` (another GPU), ``get_timing_cache`` returns None after the
    build with ``no_cache_after_build``, ``combine`` merges entries (False with
    ``combine_ok=False``). The engine inspector returns ``layer_info`` (default
    FP32_LAYERS; ``""``: TensorRT gave nothing). ``on_build`` is called inside
    ``build_serialized_network``.
    """
    seen: dict = {"flags": [], "shapes": None, "workspace": None, "cache_in": None, "cache_set": []}
    info = FP32_LAYERS if layer_info is None else layer_info
    info_text = info if isinstance(info, str) else json.dumps(info)

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    class MemoryPoolType:
        WORKSPACE = 0

    class ProfilingVerbosity:
        LAYER_NAMES_ONLY, NONE, DETAILED = 0, 1, 2

    class LayerInformationFormat:
        ONELINE, JSON = 0, 1

    builder_flags = {"FP16": 1} if has_fp16_flag else {}
    BuilderFlag = type("BuilderFlag", (), builder_flags)

    class Tensor:
        name = "image"

    class Network:
        def __init__(self, flags: int) -> None:
            seen["network_flags"] = flags

        def get_input(self, index: int) -> Tensor:
            return Tensor()

    class ParserError:
        def desc(self) -> str:
            return "unsupported op"

        def node_name(self) -> str:
            return "conv7"

        def node_operator(self) -> str:
            return "Conv"

    class OnnxParserFlag:
        NATIVE_INSTANCENORM = 0

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network: Network, logger) -> None:
            self.flags: list[int] = []

        def set_flag(self, flag: int) -> None:
            self.flags.append(flag)

        def parse_from_file(self, path: str) -> bool:
            # the flags that the parse ran with: one set after it would change nothing
            seen["parsed"] = path
            seen["parsed_with_flags"] = list(self.flags)
            return parse_ok

        def get_error(self, index: int) -> ParserError:
            return ParserError()

    class Profile:
        def set_shape(self, name, low, opt, high) -> None:
            seen["shapes"] = (name, tuple(low), tuple(opt), tuple(high))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)
            self.entries = _entries(data)

        def combine(self, other: TimingCache, ignore_mismatch: bool) -> bool:
            seen["combined"] = (sorted(other.entries), ignore_mismatch)
            if not combine_ok:
                return False
            self.entries |= other.entries
            return True

        def serialize(self) -> bytes:
            return b",".join(sorted(self.entries))

    class Config:
        progress_monitor = None
        profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        cache = None

        def set_memory_pool_limit(self, pool, size: int) -> None:
            seen["workspace"] = size

        def add_optimization_profile(self, profile: Profile) -> int:
            return 0

        def set_flag(self, flag) -> None:
            seen["flags"].append(flag)

        def create_timing_cache(self, data: bytes) -> TimingCache | None:
            if seen["cache_in"] is None:
                seen["cache_in"] = bytes(data)
            return None if bytes(data) in unreadable_caches else TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            seen["cache_set"].append(cache.data)
            if cache.data in foreign_caches and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return None if no_cache_after_build and seen.get("built") else self.cache

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config):
            seen["verbosity"] = config.profiling_verbosity
            if on_build is not None:
                on_build()
            monitor = config.progress_monitor
            monitor.phase_start("Building engine", None, 2)
            monitor.step_complete("Building engine", 0)
            monitor.phase_finish("Building engine")
            if config.cache is not None:
                config.cache.entries.add(b"built")
            seen["built"] = True
            return PLAN_BYTES

    class Inspector:
        def get_engine_information(self, fmt) -> str:
            seen["inspected"] = fmt
            return info_text

    base_runtime = trt.Runtime

    class Runtime(base_runtime):
        def deserialize_cuda_engine(self, data: bytes):
            engine = super().deserialize_cuda_engine(data)
            if engine is not None:
                engine.create_engine_inspector = Inspector
            return engine

    trt.__dict__.update(
        IProgressMonitor=IProgressMonitor,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
        MemoryPoolType=MemoryPoolType,
        ProfilingVerbosity=ProfilingVerbosity,
        LayerInformationFormat=LayerInformationFormat,
        BuilderFlag=BuilderFlag,
        OnnxParserFlag=OnnxParserFlag,
        OnnxParser=OnnxParser,
        Builder=Builder,
        Runtime=Runtime,
    )
    return seen


def install(
    monkeypatch, **tensorrt_options
) -> tuple[types.ModuleType, types.ModuleType, dict[int, np.ndarray]]:
    """Put fake ``pycuda``, ``pycuda.driver`` and ``tensorrt`` modules in ``sys.modules`` for one
    test (``monkeypatch`` undoes it); returns (tensorrt, pycuda.driver, device memory)."""
    import sys

    pycuda, driver, memory = make_pycuda()
    trt = make_tensorrt(memory, **tensorrt_options)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt, driver, memory
