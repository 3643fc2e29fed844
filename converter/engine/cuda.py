"""CUDA through pycuda: one checker for every call, and objects that own GPU resources.

Every pycuda call goes through :func:`cuda_call`, which turns pycuda's errors into a
CudaError naming the operation and the CUDA error. Pinned host memory, device memory
and the context each belong to an object with an explicit ``free()`` (idempotent), so
the owner decides when memory goes back; nothing relies on garbage collection.
"""

from __future__ import annotations

import logging
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


class DeviceContext:
    """The device's primary CUDA context, pushed around each use (any thread may run a batch)."""

    def __init__(self, device: int = 0) -> None:
        import pycuda.driver as cuda

        self._cuda = cuda
        self.device = cuda_call("cuDeviceGet", cuda.Device, device)
        self._context = cuda_call("cuDevicePrimaryCtxRetain", self.device.retain_primary_context)

    def __enter__(self) -> DeviceContext:
        cuda_call("cuCtxPushCurrent", self._context.push)
        return self

    def __exit__(self, *exc: object) -> None:
        cuda_call("cuCtxPopCurrent", self._cuda.Context.pop)

    def free(self) -> None:
        if self._context is not None:
            cuda_call("cuDevicePrimaryCtxRelease", self._context.detach)
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
