"""Frame sources: where a camera process gets its frames (OpenCV capture, a folder, synthetic).

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
