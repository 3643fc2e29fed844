"""Where decisions end up on the line-side box: the SQLite decision log and the NG image store.

This package only defines what its sinks share (the disk-full error and the JSON
encoder for numpy values); import the sinks from their modules
(``edge.sinks.decision_log.DecisionLog``, ``edge.sinks.ng_store.NgStore``).
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import LinesideError

__all__ = ["DiskFullError", "SinkError", "is_disk_full", "json_default"]

# ENOSPC is a full filesystem, EDQUOT a full user quota: both are "free some space".
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL from Python 3.11; spelled out for 3.10


class SinkError(LinesideError):
    """A sink cannot write where it was told to (bad path, not a database, no permission)."""


class DiskFullError(SinkError):
    """The disk (or quota) under a sink is full; the message names the path and the fix."""

    def __init__(self, path: str | Path, what: str) -> None:
        msg = (
            f"disk full writing the {what} at {path}: free space on that disk "
            f"or point the {what} at a bigger one (and lower its size cap)"
        )
        super().__init__(msg)
        self.path = Path(path)


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` means the disk or quota is full (OSError or SQLite's SQLITE_FULL)."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    if isinstance(exc, sqlite3.Error):
        # sqlite_errorcode exists from Python 3.11; the message is the fallback on 3.10.
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == _SQLITE_FULL:
            return True
        return "database or disk is full" in str(exc)
    return False


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` hook: results carry numpy scalars and arrays."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    msg = f"cannot store a {type(obj).__name__} as JSON"
    raise TypeError(msg)
