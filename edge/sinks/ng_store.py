"""The NG store: the image, mask and metadata of every rejected part, under a disk cap.

Layout: ``root/<camera_id>/<YYYYmmdd>/<seq:010d>.png``, ``<seq:010d>_mask.png`` and
``<seq:010d>.json`` (the day is the capture day in UTC). Each file is written to a
temporary name and renamed, and the JSON is renamed last: an entry whose JSON exists
is complete, and a crash never leaves a half-written PNG under a final name.

The store keeps the total size of its entries under ``max_bytes`` by deleting the
oldest entries first. It scans ``root`` once at start and then keeps an in-memory
index (oldest first), so a save costs O(1) amortized instead of a directory walk.
Sizes are file contents; filesystem block rounding is not counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.sinks import DiskFullError, SinkError, is_disk_full, json_default

__all__ = ["DiskFullError", "NgStore", "NgStoreError"]

log = logging.getLogger(__name__)

# Lower PNG compression: NG saves run in the collector, and speed matters more than
# a few percent of disk (the cap bounds the disk anyway).
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TMP_SUFFIX = ".tmp"


class NgStoreError(SinkError):
    """The NG store was given a bad camera id, a bad cap, or an entry bigger than its cap."""


@dataclass
class _Entry:
    files: tuple[Path, ...]
    nbytes: int


def _check_camera_id(camera_id: str) -> None:
    # The id becomes a directory name: refuse anything that could escape root.
    if not _SAFE_ID.match(camera_id):
        msg = (
            f"camera id {camera_id!r} cannot name an NG store folder; use 1-64 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
        raise NgStoreError(msg)


def _encode_png(what: str, array: np.ndarray) -> bytes:
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        msg = f"NG store: {what} must be a 2-D or 3-D uint8 array, got {array.dtype} {array.shape}"
        raise ValueError(msg)
    ok, buf = cv2.imencode(".png", array, _PNG_PARAMS)
    if not ok:
        msg = f"NG store: PNG encoding of the {what} {array.shape} failed"
        raise ValueError(msg)
    return buf.tobytes()


class NgStore:
    """Saves NG images, masks and metadata under ``root``, rotating out the oldest past ``max_bytes``.

    Counters: ``saved`` (entries written by this instance), ``rotated_out`` (entries
    deleted to stay under the cap), ``bytes_used`` (current total), ``len(store)``.
    Thread-safe.
    """

    def __init__(self, root: str | Path, max_bytes: int, fsync: bool = False) -> None:
        if int(max_bytes) <= 0:
            msg = f"ng_store.max_bytes must be a positive number of bytes, got {max_bytes!r}"
            raise NgStoreError(msg)
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        # fsync makes an entry survive a power cut, at the cost of milliseconds per save.
        self.fsync = fsync
        self.saved = 0
        self.rotated_out = 0
        self.bytes_used = 0
        self._index: OrderedDict[Path, _Entry] = OrderedDict()  # key: the .json path; oldest first
        self._dirs: set[Path] = set()  # day folders known to exist (saves a mkdir per save)
        self._lock = threading.Lock()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFullError(self.root, "NG store") from exc
            msg = f"cannot create the NG store at {self.root}: {exc}; set ng_store.root to a writable folder"
            raise NgStoreError(msg) from exc
        self._scan()
        with self._lock:
            self._rotate(0)

    def __len__(self) -> int:
        return len(self._index)

    def _scan(self) -> None:
        """Index the entries already on disk, oldest first; drop leftovers of crashed saves."""
        found: list[tuple[int, Path, _Entry]] = []
        for day in self.root.glob("*/*"):
            if not day.is_dir():
                continue
            self._dirs.add(day)
            names = {p.name: p for p in day.iterdir()}
            stems = {n[:-5] for n in names if n.endswith(".json")}
            for name, p in names.items():
                stem = name.split("_", 1)[0].split(".", 1)[0]
                # Temporary files and PNGs without a JSON are what a crash mid-save leaves.
                if name.endswith(_TMP_SUFFIX) or (name.endswith(".png") and stem not in stems):
                    log.info("NG store: removing leftover of an interrupted save %s", p)
                    p.unlink(missing_ok=True)
            for stem in stems:
                files = tuple(
                    day / n for n in (f"{stem}.png", f"{stem}_mask.png", f"{stem}.json") if n in names
                )
                try:
                    stats = [f.stat() for f in files]
                except FileNotFoundError:
                    continue
                found.append((stats[-1].st_mtime_ns, files[-1], _Entry(files, sum(s.st_size for s in stats))))
        found.sort(key=lambda item: (item[0], item[1]))
        for _, key, entry in found:
            self._index[key] = entry
            self.bytes_used += entry.nbytes
        if found:
            log.info("NG store %s: %d entries, %d bytes", self.root, len(found), self.bytes_used)

    def save(
        self,
        camera_id: str,
        seq: int,
        image: np.ndarray,
        mask: np.ndarray,
        meta: dict[str, Any] | None = None,
        epoch: int = 0,
    ) -> Path:
        """Write one NG entry and return the path of its image PNG.

        ``meta`` is stored as JSON next to it (numpy values allowed), with ``camera_id``,
        ``seq`` and the file names added. The day folder comes from ``meta["capture_ts"]``
        (unix seconds) when given, else from now. Saving the same (camera, day, seq)
        again replaces the entry. Raises DiskFullError when the disk is full.
        """
        _check_camera_id(camera_id)
        seq = int(seq)
        meta = dict(meta or {})
        ts = float(meta.get("capture_ts") or time.time())
        day = self.root / camera_id / time.strftime("%Y%m%d", time.gmtime(ts))
        # The epoch (camera process start) keeps a restarted camera's seq 0 from replacing older NG evidence.
        stem = f"{epoch}-{seq:010d}" if epoch else f"{seq:010d}"
        image_path, mask_path, meta_path = day / f"{stem}.png", day / f"{stem}_mask.png", day / f"{stem}.json"
        meta.update(camera_id=camera_id, seq=seq, image=image_path.name, mask=mask_path.name)
        blobs = [
            (image_path, _encode_png("image", image)),
            (mask_path, _encode_png("mask", mask)),
            (meta_path, json.dumps(meta, default=json_default, indent=1).encode()),
        ]
        nbytes = sum(len(b) for _, b in blobs)
        if nbytes > self.max_bytes:
            msg = (
                f"NG entry {camera_id}/{stem} needs {nbytes} bytes, more than the store's cap of "
                f"{self.max_bytes}; raise sinks.ng_store_max_mb in the line config"
            )
            raise NgStoreError(msg)
        with self._lock:
            old = self._index.pop(meta_path, None)
            if old is not None:
                self.bytes_used -= old.nbytes
            # Make room before writing, so the cap holds even while the new files land.
            self._rotate(nbytes)
            try:
                if day not in self._dirs:
                    day.mkdir(parents=True, exist_ok=True)
                    self._dirs.add(day)
                for path, blob in blobs:
                    self._write_atomic(path, blob)
            except OSError as exc:
                for path, _ in blobs:
                    path.unlink(missing_ok=True)
                if is_disk_full(exc):
                    raise DiskFullError(self.root, "NG store") from exc
                msg = f"cannot write NG entry {meta_path}: {exc}; check ng_store.root permissions"
                raise NgStoreError(msg) from exc
            self._index[meta_path] = _Entry(tuple(p for p, _ in blobs), nbytes)
            self.bytes_used += nbytes
            self.saved += 1
        return image_path

    def _write_atomic(self, path: Path, blob: bytes) -> None:
        tmp = path.with_name(path.name + _TMP_SUFFIX)
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _rotate(self, incoming: int) -> None:
        """Delete the oldest entries until ``incoming`` more bytes fit under the cap (lock held)."""
        while self._index and self.bytes_used + incoming > self.max_bytes:
            _, entry = self._index.popitem(last=False)
            for f in entry.files:
                f.unlink(missing_ok=True)
            self.bytes_used -= entry.nbytes
            self.rotated_out += 1
            day = entry.files[0].parent
            # rmdir only succeeds on an empty folder: cheaper than listing it.
            with contextlib.suppress(OSError):
                day.rmdir()
                self._dirs.discard(day)

    def stats(self) -> dict[str, int]:
        """The counters, for metrics and health."""
        return {
            "saved": self.saved,
            "rotated_out": self.rotated_out,
            "bytes_used": self.bytes_used,
            "entries": len(self._index),
            "max_bytes": self.max_bytes,
        }
