"""Frame sources: where a camera process gets its frames (OpenCV capture, a folder, synthetic).

Each kind is one module here, named in ``base._REGISTRY`` by import path (loaded on first use).

Build one from config with ``make_source(kind, **options)``; reconnect with ``Backoff``.
"""

from edge.sources.backoff import Backoff
from edge.sources.base import (
    CameraConfigError,
    CameraError,
    Captured,
    FrameSource,
    SourceConfigError,
    available_sources,
    make_source,
    register_source,
)

__all__ = [
    "Backoff",
    "CameraConfigError",
    "CameraError",
    "Captured",
    "FrameSource",
    "SourceConfigError",
    "available_sources",
    "make_source",
    "register_source",
]
