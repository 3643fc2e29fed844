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
    join in). An unreadable or corrupt image is skipped, logged and counted in
    ``corrupt``. Frames are 8-bit: grayscale files stay HxW, colour ones become HxWx3
    BGR (alpha dropped, 16-bit scaled down by OpenCV). ``last_path`` names the file of
    the last frame, for tracing.
    """

    live = False  # a recording: it waits for the line

    def __init__(self, path: str | Path, fps: float = 0, loop: bool = False, pattern: str = "*") -> None:
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
        self._is_open = False

    def _list(self) -> list[Path]:
        if not self.path.is_dir():
            what = "is not a folder" if self.path.exists() else "does not exist"
            msg = f"{self.name}: {self.path} {what}; check the camera's path"
            raise CameraError(msg)
        files = sorted(
            p for p in self.path.glob(self.pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
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
        self._pacer.restart()
        self._is_open = True
        log.info("%s: %d images", self.name, len(self._files))

    def read(self) -> Captured | None:
        if not self._is_open:
            msg = f"{self.name}: read() before open()"
            raise CameraError(msg)
        self._pacer.wait()
        failed_in_a_row = 0
        while True:
            if self._next >= len(self._files):
                if not self.loop:
                    return None
                self._files = self._list()
                self._next = 0
            path = self._files[self._next]
            self._next += 1
            image = self._load(path)
            if image is not None:
                self.frames += 1
                self.last_path = path
                return Captured(image, time.time())
            failed_in_a_row += 1
            # A looping folder of nothing but corrupt files would spin forever.
            if failed_in_a_row >= len(self._files) and self.loop:
                msg = f"{self.name}: none of the {len(self._files)} images in {self.path} is readable"
                raise CameraError(msg)

    def _load(self, path: Path) -> np.ndarray | None:
        # ANYCOLOR keeps grayscale files single-channel (no needless 3x copy) and,
        # without ANYDEPTH, converts 16-bit files to 8-bit.
        image = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)
        if image is None or image.size == 0:
            self.corrupt += 1
            log.warning("%s: skipped unreadable image %s (%d so far)", self.name, path, self.corrupt)
            return None
        return image

    def close(self) -> None:
        self._is_open = False
        self._files = []
