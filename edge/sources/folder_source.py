"""A folder of images replayed as a camera: for demos, benchmarks and re-inspecting saved parts."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from edge.sources.base import CameraError, Captured, FrameSource, Pacer

__all__ = ["IMAGE_SUFFIXES", "FolderSource"]

log = logging.getLogger(__name__)

#: file suffixes replayed (case-insensitive)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class FolderSource(FrameSource):
    """Images of ``path`` matching ``pattern``, in sorted file-name order, at ``fps``.

    ``fps=0`` replays as fast as the reader asks. Without ``loop`` the folder ends
    with None; with it, the folder is listed again at each pass (files added meanwhile
    join in). Every listed entry is one item: an image that cannot be used (empty,
    corrupt or truncated, not an image, float pixels, gone since the listing, a folder
    named like an image) is read as ``Captured.unusable`` with the file and the reason,
    which the camera reports as NO_DECISION; it is logged and counted in ``corrupt``.
    Frames are 8-bit: grayscale files stay HxW, colour ones become HxWx3 BGR (alpha
    dropped); 16-bit files are scaled full scale to full scale (value * 255 / 65535,
    rounded). ``last_path`` names the file of the last item, for tracing.

    A looping folder keeps its decoded frames, up to ``cache_mb`` MiB (0 = none), so that
    later passes do not decode each file again (a 512x512 PNG costs ~2 ms of a core, more
    than the rest of the line per frame). A cached frame is used only while its file's size
    and modification time are unchanged; frames past the cap are decoded every pass (the
    cache keeps the first ones: in a loop, evicting would only make it miss every time).
    Cached frames are read-only arrays shared between passes.
    """

    live = False  # a recording: it waits for the line

    def __init__(
        self, path: str | Path, fps: float = 0, loop: bool = False, pattern: str = "*", cache_mb: float = 256
    ) -> None:
        self._pacer = Pacer(fps)
        self.path = Path(path)
        self.fps = float(fps)
        self.loop = loop
        self.pattern = pattern
        self.name = f"folder:{self.path}"
        self.corrupt = 0
        self.frames = 0
        self.last_path: Path | None = None
        self._files: list[Path] = []
        self._next = 0
        self._readable = 0  # frames read in this pass (a loop of nothing readable is a fault)
        self._is_open = False
        self.cache_bytes = int(cache_mb * 2**20) if loop else 0
        #: path -> (size, mtime_ns, frame) of decoded files, ``cached_bytes`` in all
        self._cache: dict[Path, tuple[int, int, np.ndarray]] = {}
        self.cached_bytes = 0

    def _list(self) -> list[Path]:
        if not self.path.is_dir():
            what = "is not a folder" if self.path.exists() else "does not exist"
            msg = f"{self.name}: {self.path} {what}; check the camera's path"
            raise CameraError(msg)
        # Not only regular files: a folder or a broken link named like an image is an item
        # the line must account for (a NO_DECISION saying what it is), not a silent gap.
        files = sorted(p for p in self.path.glob(self.pattern) if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            msg = (
                f"{self.name}: no images matching {self.pattern!r} in {self.path}; "
                f"add {'/'.join(sorted(IMAGE_SUFFIXES))} files or fix the pattern"
            )
            raise CameraError(msg)
        return files

    def open(self) -> None:
        self._files = self._list()
        self._next = 0
        self._readable = 0
        self._pacer.restart()
        self._is_open = True
        log.info("%s: %d images", self.name, len(self._files))

    def read(self) -> Captured | None:
        if not self._is_open:
            msg = f"{self.name}: read() before open()"
            raise CameraError(msg)
        self._pacer.wait()
        if self._next >= len(self._files):
            if not self.loop:
                return None
            # A looping folder of nothing but unusable files would report them forever as
            # fast as it is read: call it a camera fault, reopened with backoff.
            if not self._readable:
                msg = f"{self.name}: none of the {len(self._files)} images in {self.path} is readable"
                raise CameraError(msg)
            self._files = self._list()
            self._next = self._readable = 0
        path = self._files[self._next]
        self._next += 1
        self.last_path = path
        image, why = self._cached_load(path)
        if image is None:
            self.corrupt += 1
            shown = path.relative_to(self.path)
            log.warning("%s: unreadable image %s: %s (%d so far)", self.name, shown, why, self.corrupt)
            return Captured.unusable(f"unreadable image: {shown} ({why})")
        self.frames += 1
        self._readable += 1
        return Captured(image, time.time())

    def _cached_load(self, path: Path) -> tuple[np.ndarray | None, str]:
        """``_load``, through the cache of a looping folder."""
        if not self.cache_bytes:
            return self._load(path)
        try:
            st = path.stat()
        except OSError:
            self._forget(path)
            return self._load(path)  # says what is wrong with it
        hit = self._cache.get(path)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2], ""
        self._forget(path)  # changed since it was cached
        image, why = self._load(path)
        if image is not None and self.cached_bytes + image.nbytes <= self.cache_bytes:
            image.flags.writeable = False  # shared by every pass: nobody may draw on it
            self._cache[path] = (st.st_size, st.st_mtime_ns, image)
            self.cached_bytes += image.nbytes
        return image, why

    def _forget(self, path: Path) -> None:
        old = self._cache.pop(path, None)
        if old is not None:
            self.cached_bytes -= old[2].nbytes

    @staticmethod
    def _load(path: Path) -> tuple[np.ndarray | None, str]:
        """The 8-bit image in ``path``, or None and why it cannot be used."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, "a broken link" if path.is_symlink() else "gone: removed after the folder was listed"
        except IsADirectoryError:
            return None, "a folder, not a file"
        except OSError as exc:
            return None, f"cannot read it: {exc.strerror or exc}"
        if not data:
            return None, "empty file (0 bytes)"
        try:
            # ANYCOLOR keeps grayscale files single-channel (no needless 3x copy); ANYDEPTH
            # shows the file's real depth, so 16-bit and float pixels are handled here on
            # purpose instead of by OpenCV's implicit conversion (which loses float files).
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
        except cv2.error as exc:
            return None, f"OpenCV could not decode it: {str(exc).strip().splitlines()[-1]}"
        if image is None or image.size == 0:
            return None, "OpenCV could not decode it: corrupt, truncated or not an image"
        if image.dtype == np.uint16:
            # Full scale to full scale, rounded: the same picture in 8 bits (OpenCV's own
            # 8-bit load truncates PNGs but rounds TIFFs). 12-bit data stored in 16 bits
            # comes out 16x darker; such files need converting offline with their real range.
            image = cv2.convertScaleAbs(image, alpha=255 / 65535)
        elif image.dtype != np.uint8:
            # A float (or 32-bit) image has no defined white: 1.0, 255 and 65535 are all in use.
            return None, f"{image.dtype} pixels have no defined 8-bit scale; save it as 8-bit"
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        return image, ""

    def close(self) -> None:
        self._is_open = False
        self._files = []
        self._cache.clear()
        self.cached_bytes = 0
