"""The interface every inference backend implements (Polygraphy's runner shape).

The public methods do the checks and the timing; subclasses implement the
``*_impl`` methods. A backend is a context manager: ``with make_backend(...) as b``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from converter.errors import LinesideError


class BackendError(LinesideError, RuntimeError):
    """A backend could not load or run; the message names the cause and the fix."""


class Backend(ABC):
    """Load a model, infer batches of preprocessed images, free everything on close.

    ``infer`` takes a float32 batch in the layout the manifest names (NHWC for
    Keras-exported graphs) and returns per-pixel probabilities shaped (N, H, W), in an
    array the backend may reuse on its next call (copy what must outlive it).
    """

    #: short name shown in logs and metrics ("onnxruntime", "tensorrt")
    name = "backend"
    #: True when inference leaves the CPU free (a GPU), so the worker should prepare the
    #: next batch meanwhile; on a CPU backend that only takes cores from the model
    overlaps_host_work = False

    def __init__(self) -> None:
        self.is_active = False
        #: seconds spent in the last ``infer`` call
        self.inference_time = 0.0
        #: largest batch this backend accepts (engine profiles cap it)
        self.max_batch = 64

    def activate(self) -> Backend:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self.is_active:
            msg = f"{self.name} backend used before activate()"
            raise BackendError(msg)
        if batch.ndim != 4:
            msg = f"{self.name}: expected a 4-D batch, got shape {batch.shape}"
            raise BackendError(msg)
        start = time.perf_counter()
        out = self.infer_impl(batch)
        self.inference_time = time.perf_counter() - start
        return out

    def input_buffer(self, rows: int, slot: int = 0) -> np.ndarray | None:
        """A writable input array of ``rows`` rows in the backend's own memory (pinned host
        memory on a GPU) that the caller may normalize into and then pass to ``infer``,
        which then skips its host copy; None (the default, ONNX Runtime) when the backend
        has none. ``slot`` 0 or 1: the caller fills one while ``infer`` reads the other.
        Valid while the backend is active."""
        return None

    def deactivate(self) -> None:
        if self.is_active:
            self.is_active = False
            self.deactivate_impl()

    def describe(self) -> str:
        """One line for logs: what runs and where."""
        return self.name

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, batch: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def deactivate_impl(self) -> None: ...


def squeeze_probabilities(out: np.ndarray) -> np.ndarray:
    """(N, H, W, 1) or (N, 1, H, W) model output -> (N, H, W) float32."""
    if out.ndim == 4:
        out = out[..., 0] if out.shape[-1] == 1 else out[:, 0]
    return np.asarray(out, dtype=np.float32)
