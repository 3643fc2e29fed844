"""CUDA through pycuda: one checker for every call, and objects that own GPU resources.

Every pycuda call goes through :func:`cuda_call`, which turns pycuda's errors into a
CudaError naming the operation and the CUDA error. Pinned host memory, device memory
and the context each belong to an object with an explicit ``free()`` (idempotent), so
the owner decides when memory goes back; nothing relies on garbage collection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from converter.errors import LinesideError

log = logging.getLogger(__name__)

T = TypeVar("T")


class CudaError(LinesideError, RuntimeError):
    """A CUDA call failed; the message names the operation and CUDA's error."""


def cuda_call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one pycuda call; a failure becomes CudaError("CUDA error in <what>: ...")."""
    import pycuda.driver as cuda

    try:
        return fn(*args, **kwargs)
    except cuda.Error as exc:
        msg = f"CUDA error in {what}: {type(exc).__name__}: {exc}"
        raise CudaError(msg) from None


#: device -> (the pycuda module, its primary context): retained once per process, see DeviceContext
_PRIMARY: dict[int, tuple[Any, Any]] = {}
_PRIMARY_LOCK = threading.Lock()


def _primary_context(cuda: Any, device: Any, index: int) -> Any:
    """The device's primary context, retained on first use and kept for the process."""
    with _PRIMARY_LOCK:
        held = _PRIMARY.get(index)
        if held is None or held[0] is not cuda:  # a test may swap the pycuda module
            held = _PRIMARY[index] = (
                cuda,
                cuda_call("cuDevicePrimaryCtxRetain", device.retain_primary_context),
            )
        return held[1]


class DeviceContext:
    """The device's primary CUDA context, pushed around each use (any thread may run a batch).

    Every push has its pop (``with``), so a thread's context stack is empty between uses.
    The primary context is retained once per process and never detached while it runs:
    pycuda's ``detach()`` of a primary context calls ``cuDevicePrimaryCtxRelease``, which
    never pops, and when the context is not current pycuda pushes it first ("pop is
    implicit in detach", pycuda src/cpp/cuda.hpp ``context::detach``, true only of
    ``cuCtxDetach``); popping it before the detach therefore does not help, and pycuda
    has no call that pops what detach left. Each load/free cycle would leave one more
    entry on the thread's stack. Keeping the retain costs nothing: TensorRT's CUDA runtime
    retains the same primary context for the life of the process anyway, and the memory
    of an engine goes back with its buffers and objects in ``free()``.
    """

    def __init__(self, device: int = 0) -> None:
        import pycuda.driver as cuda

        self._cuda = cuda
        self.device = cuda_call("cuDeviceGet", cuda.Device, device)
        self._context = _primary_context(cuda, self.device, device)

    def __enter__(self) -> DeviceContext:
        if self._context is None:
            msg = "CUDA context used after free()"
            raise CudaError(msg)
        cuda_call("cuCtxPushCurrent", self._context.push)
        return self

    def __exit__(self, *exc: object) -> None:
        cuda_call("cuCtxPopCurrent", self._cuda.Context.pop)

    def free(self) -> None:
        """Drop this user of the context (idempotent); it must not be current here."""
        if self._context is not None:
            current = cuda_call("cuCtxGetCurrent", self._cuda.Context.get_current)
            if current is not None and current == self._context:
                # a with-block left open (an exception between push and pop): pop it here,
                # or the thread keeps the context current after the engine is gone
                log.warning("the CUDA context was still current at free(); popping it")
                cuda_call("cuCtxPopCurrent", self._cuda.Context.pop)
            self._context = None


class PinnedBuffer:
    """Page-locked host memory as a numpy array, so copies to the GPU can be asynchronous."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        import pycuda.driver as cuda

        self.array: np.ndarray | None = cuda_call("cuMemHostAlloc", cuda.pagelocked_empty, shape, dtype)

    def free(self) -> None:
        if self.array is not None:
            cuda_call("cuMemFreeHost", self.array.base.free)
            self.array = None


class DeviceBuffer:
    """Device memory of ``nbytes``; ``int(buffer.allocation)`` is the address TensorRT takes."""

    def __init__(self, nbytes: int) -> None:
        import pycuda.driver as cuda

        self.nbytes = nbytes
        self.allocation = cuda_call("cuMemAlloc", cuda.mem_alloc, nbytes)

    @property
    def address(self) -> int:
        return int(self.allocation)

    def free(self) -> None:
        if self.allocation is not None:
            cuda_call("cuMemFree", self.allocation.free)
            self.allocation = None


class Stream:
    """One CUDA stream: copies and the engine run on it in order, the host waits once."""

    def __init__(self) -> None:
        import pycuda.driver as cuda

        self._cuda = cuda
        self.stream = cuda_call("cuStreamCreate", cuda.Stream)

    @property
    def handle(self) -> int:
        return int(self.stream.handle)

    def copy_to_device(self, device: DeviceBuffer, host: np.ndarray) -> None:
        cuda_call("cuMemcpyHtoDAsync", self._cuda.memcpy_htod_async, device.allocation, host, self.stream)

    def copy_to_host(self, host: np.ndarray, device: DeviceBuffer) -> None:
        cuda_call("cuMemcpyDtoHAsync", self._cuda.memcpy_dtoh_async, host, device.allocation, self.stream)

    def synchronize(self) -> None:
        cuda_call("cuStreamSynchronize", self.stream.synchronize)

    def free(self) -> None:
        # pycuda destroys the stream when the object goes; drop our reference inside the context
        self.stream = None
