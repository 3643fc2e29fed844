"""The interface every frame source implements, and the registry that builds one by kind.

A camera process owns one source: ``open()``, then ``read()`` in a loop, ``close()``
on a fault, and ``open()`` again after a backoff delay. So a source must be
re-openable after ``close()``, ``close()`` must be safe at any time, and neither
``open()`` nor ``read()`` may block past its deadline.
"""

from __future__ import annotations

import importlib
import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.errors import LinesideError

__all__ = [
    "CameraConfigError",
    "CameraError",
    "Captured",
    "FrameSource",
    "Pacer",
    "SourceConfigError",
    "available_sources",
    "make_source",
    "register_source",
]


@dataclass
class Captured:
    """One frame as it left the source, or (``fault`` set) an item the source could not read."""

    image: np.ndarray  #: uint8 HxW or HxWx3 (BGR); an empty placeholder when ``fault`` is set
    capture_ts: float  #: time.time() at capture
    truth: dict | None = None  #: ground truth when the source knows it (synthetic), else None
    #: why this item has no usable image (an unreadable file in a folder): the camera gives it a
    #: seq of its own and reports it as NO_DECISION with this reason, so it is counted, not skipped
    fault: str | None = None

    @classmethod
    def unusable(cls, reason: str) -> Captured:
        """An item that the source has but cannot turn into a frame, and why."""
        return cls(np.zeros((0, 0), np.uint8), time.time(), None, reason)


class CameraError(LinesideError):
    """An open or read fault; the camera loop closes the source and reopens it with backoff."""

    #: False when reopening cannot help (the loop may stop retrying and report it)
    retryable = True


class CameraConfigError(CameraError):
    """A fault that reopening cannot fix (an OpenCV without GStreamer, a 16-bit camera)."""

    retryable = False


class SourceConfigError(LinesideError, ValueError):
    """A source was configured wrongly (unknown kind, unknown option); found before any open."""


class FrameSource(ABC):
    """A camera, a video, a folder of images: anything that yields frames."""

    #: a short label for logs and metrics (credentials removed)
    name: str = "source"
    #: True for a source that runs on its own clock (a camera, a stream): a frame not taken
    #: when it comes is gone, so the line always takes the newest one. False for a
    #: recording (a video file, an image folder), which waits for the line: a lossless
    #: replay pauses instead of dropping frames when the line is busy.
    live: bool = True

    @abstractmethod
    def open(self) -> None:
        """Connect; returns or raises CameraError within the source's open deadline."""

    @abstractmethod
    def read(self) -> Captured | None:
        """The next frame, or None at the end of a finite stream; CameraError on a fault or deadline.

        An item that exists but gives no usable frame (a corrupt file in a folder) is returned
        as ``Captured.unusable(reason)``, never skipped: the line counts it as NO_DECISION."""

    @abstractmethod
    def close(self) -> None:
        """Release everything; safe to call twice, after a failed open, or never opened."""

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pacer:
    """Holds a replayed source (folder, video file) to ``fps`` frames per second; 0 = unthrottled."""

    def __init__(self, fps: float) -> None:
        if fps < 0:
            msg = f"fps must be >= 0 (0 = as fast as possible), got {fps}"
            raise SourceConfigError(msg)
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._due = 0.0

    def restart(self) -> None:
        """The next frame is due now."""
        self._due = time.monotonic()

    def wait(self) -> None:
        """Sleep until the next frame is due."""
        if not self.period:
            return
        now = time.monotonic()
        if self._due > now:
            time.sleep(self._due - now)
            now = self._due
        # Keep a steady cadence; after a reader stall longer than a period, restart the
        # cadence from now instead of bursting frames to catch up.
        nxt = self._due + self.period
        self._due = nxt if nxt >= now else now + self.period


SourceFactory = Callable[..., FrameSource]

# Built-in kinds are named by import path, so importing this module never loads OpenCV
# capture code, and the source modules can import this one without a cycle.
_REGISTRY: dict[str, SourceFactory | str] = {
    "opencv": "edge.sources.opencv_source:OpenCvSource",
    "folder": "edge.sources.folder_source:FolderSource",
    "synthetic": "edge.sources.synthetic_source:SyntheticSource",
}


def register_source(kind: str, factory: SourceFactory) -> None:
    """Make ``make_source(kind, ...)`` call ``factory(**options)``; replaces an earlier one."""
    _REGISTRY[kind] = factory


def available_sources() -> list[str]:
    """The kinds ``make_source`` knows, sorted."""
    return sorted(_REGISTRY)


def _resolve(kind: str) -> SourceFactory:
    factory = _REGISTRY[kind]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
        _REGISTRY[kind] = factory
    return factory


def make_source(kind: str, **options: Any) -> FrameSource:
    """Build a source of ``kind`` from its config options.

    Raises SourceConfigError naming the allowed kinds or the bad option, so a typo in
    the config stops start-up with one line instead of a TypeError deep inside.
    """
    if kind not in _REGISTRY:
        msg = f"unknown camera source kind {kind!r}; use one of {available_sources()}"
        raise SourceConfigError(msg)
    factory = _resolve(kind)
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        msg = f"camera source {kind!r}: {exc}; check the camera's options in the config"
        raise SourceConfigError(msg) from exc
    except ValueError:
        pass  # no introspectable signature (a C callable): let the call itself check
    return factory(**options)
