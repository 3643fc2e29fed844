"""A camera, stream, video file or GStreamer pipeline read through ``cv2.VideoCapture``.

``VideoCapture.open`` and ``read`` can block forever (a dead RTSP peer, a USB camera
pulled mid-frame, a GStreamer pipeline that never prerolls). So every call runs in a
daemon helper thread that owns the capture object, and the caller waits for it with a
deadline. When a deadline passes, the whole session (thread + capture) is abandoned,
never reused, and ``open()`` starts a fresh one: a stuck native call cannot be
interrupted from Python, only left behind. Where the backend supports them (FFmpeg,
GStreamer) OpenCV's own open/read timeouts are set too, so most stuck calls end by
themselves and their thread exits.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from edge.sources.base import CameraConfigError, CameraError, Captured, FrameSource, Pacer, SourceConfigError

__all__ = ["OpenCvSource", "gstreamer_available", "is_gstreamer_pipeline", "redact_uri"]

log = logging.getLogger(__name__)

#: ``backend=`` values and the OpenCV API they select
BACKENDS: dict[str, int] = {
    "auto": cv2.CAP_ANY,
    "ffmpeg": cv2.CAP_FFMPEG,
    "gstreamer": cv2.CAP_GSTREAMER,
    "v4l2": cv2.CAP_V4L2,
    "dshow": cv2.CAP_DSHOW,
    "msmf": cv2.CAP_MSMF,
    "avfoundation": cv2.CAP_AVFOUNDATION,
}
# Elements a pipeline usually starts with, for strings with a single element and no "!".
_GST_SOURCES = (
    "appsrc",
    "autovideosrc",
    "filesrc",
    "libcamerasrc",
    "nvarguscamerasrc",
    "nvv4l2camerasrc",
    "rtspsrc",
    "souphttpsrc",
    "udpsrc",
    "uridecodebin",
    "v4l2src",
    "videotestsrc",
)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_STOP = object()
# A stuck release() must not hold up close(); how long close waits for it by default.
_RELEASE_WAIT_S = 1.0

CaptureFactory = Callable[[str | int, int, list[int]], Any]


@functools.cache
def gstreamer_available() -> bool:
    """True when this OpenCV was built with GStreamer (pip wheels are not)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def is_gstreamer_pipeline(uri: str | int) -> bool:
    """True for a GStreamer pipeline string like ``v4l2src ! videoconvert ! appsink``.

    URLs are never pipelines, even with a "!" in a password.
    """
    if not isinstance(uri, str) or _URL.match(uri):
        return False
    text = uri.strip()
    return "!" in text or text.split(" ", 1)[0] in _GST_SOURCES


def redact_uri(uri: str | int) -> str:
    """The uri for logs and metrics, without the password of ``rtsp://user:pass@host``."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", str(uri))


def _default_factory(target: str | int, api: int, params: list[int]) -> Any:
    return cv2.VideoCapture(target, api, params)


class _Session:
    """One capture object, owned by one daemon thread.

    A recording (``live=False``) is read on request: the thread runs the calls given to
    it, so a video file is read frame by frame at the line's pace. A live source is
    grabbed continuously as its frames come (``cap.grab()``), so the decoder's and the
    network's buffers never fill with old pictures; only the frame a reader asked for
    is decoded (``cap.retrieve()``), and it is the first one grabbed after the request.
    Its timestamp is when the grab returned: when the frame was captured, not when the
    camera loop got round to it.
    """

    def __init__(
        self,
        factory: CaptureFactory,
        target: str | int,
        api: int,
        params: list[int],
        label: str,
        live: bool = False,
    ):
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._open_done = threading.Event()
        self._open_error: BaseException | None = None
        self._args = (factory, target, api, params)
        self.live = live
        self._stopped = threading.Event()
        # live: the reader's request and the grab thread's answer
        self._cond = threading.Condition()
        self._wanted = False
        self._answer: tuple[bool, np.ndarray | None, float] | None = None
        self._grab_error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"capture:{label}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        factory, target, api, params = self._args
        cap = None
        try:
            cap = factory(target, api, params)
            if not cap.isOpened():
                self._open_error = CameraError("VideoCapture did not open")
        except Exception as exc:  # a backend's exception goes back to open()
            self._open_error = exc
        self._open_done.set()
        try:
            if self._open_error is None:
                if self.live:
                    self._grab_loop(cap)
                else:
                    self._serve(cap)
        finally:
            if cap is not None:
                try:
                    cap.release()
                except Exception:
                    log.exception("capture release failed")

    def _serve(self, cap: Any) -> None:
        while True:
            call = self._requests.get()
            if call is _STOP:
                return
            try:
                self._results.put(call(cap))
            except Exception as exc:
                self._results.put(exc)

    def _grab_loop(self, cap: Any) -> None:
        # Right after a (re)connect the decoder hands over what it buffered while the stream
        # was probed (seconds of old pictures, in a burst). A frame that comes much faster
        # than the stream's own rate is such a backlog frame: a reader is not given one
        # unless the burst lasts longer than any probe would (a camera faster than it says).
        fps = _nominal_fps(cap)
        period = 1.0 / fps if fps else 0.0
        burst_limit = max(3, int(3 * fps))
        burst, last_ts = 0, time.time()
        while not self._stopped.is_set():
            try:
                ok = cap.grab()
                ts = time.time()
                if not ok:
                    raise CameraError("read failed (stream ended or camera disconnected)")
                burst = burst + 1 if period and ts - last_ts < 0.5 * period else 0
                last_ts = ts
                with self._cond:
                    wanted = self._wanted and (burst == 0 or burst > burst_limit)
                answer = (*cap.retrieve(), ts) if wanted else None
            except Exception as exc:  # the reader gets it; this capture is finished
                with self._cond:
                    self._grab_error = exc
                    self._cond.notify_all()
                return
            if answer is not None:
                with self._cond:
                    self._answer, self._wanted = answer, False
                    self._cond.notify_all()

    def wait_open(self, timeout: float) -> BaseException | None:
        """None once opened; the error if it failed; TimeoutError past ``timeout``."""
        if not self._open_done.wait(timeout):
            raise TimeoutError
        return self._open_error

    def call(self, fn: Callable[[Any], Any], timeout: float) -> Any:
        """Run ``fn(capture)`` in the session thread; TimeoutError past ``timeout``."""
        self._requests.put(fn)
        try:
            result = self._results.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        if isinstance(result, Exception):
            raise result
        return result

    def next_frame(self, timeout: float) -> tuple[bool, np.ndarray | None, float]:
        """Live: the first frame grabbed after this call, as ``(ok, frame, ts)``;
        TimeoutError when none comes within ``timeout``; the grab's error if it failed."""
        with self._cond:
            if self._grab_error is not None:
                raise self._grab_error
            self._answer, self._wanted = None, True
            done = self._cond.wait_for(
                lambda: self._answer is not None or self._grab_error is not None, timeout
            )
            if not done:
                self._wanted = False
                raise TimeoutError
            if self._answer is None:
                raise self._grab_error  # type: ignore[misc]
            answer, self._answer = self._answer, None
            return answer

    def stop(self, wait_s: float) -> bool:
        """Ask the thread to release the capture and exit; True if it did within ``wait_s``."""
        self._stopped.set()
        self._requests.put(_STOP)
        self.thread.join(wait_s)
        return not self.thread.is_alive()


def _nominal_fps(cap: Any) -> float:
    """The frame rate the capture reports for its stream, or 0 when it does not know."""
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    except Exception:  # a backend (or a stand-in device) without the property
        return 0.0
    return fps if 0 < fps < 1000 else 0.0


def _read(cap: Any) -> tuple[bool, np.ndarray | None, float]:
    ok, frame = cap.read()
    return ok, frame, time.time()


def _rewind_and_read(cap: Any) -> tuple[bool, np.ndarray | None, float]:
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return _read(cap)


class OpenCvSource(FrameSource):
    """Frames from ``cv2.VideoCapture``: a device index, an RTSP/HTTP URL, a video file or a
    GStreamer pipeline string.

    ``open`` returns or raises CameraError within ``open_timeout_s``; ``read`` within
    ``read_timeout_s``. A live source (device, URL, pipeline) is grabbed continuously and
    ``read`` returns the next fresh frame, so a reader slower than the stream never falls
    behind it. A video file is read frame by frame; it ends with None, or starts again
    when ``loop``, and is replayed at ``fps`` (0 = as fast as it decodes; live sources
    ignore it). ``close``
    waits at most ``close_timeout_s`` for the capture to be released, then leaves it to
    its thread.
    ``capture_factory(target, api, params)`` replaces ``cv2.VideoCapture`` (tests inject
    a capture that blocks). Counters: ``frames``, ``timeouts``, ``abandoned`` (helper
    threads left stuck in a native call).
    """

    def __init__(
        self,
        uri: str | int,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 2.0,
        backend: str = "auto",
        loop: bool = False,
        fps: float = 0,
        close_timeout_s: float = _RELEASE_WAIT_S,
        capture_factory: CaptureFactory | None = None,
    ) -> None:
        if backend not in BACKENDS:
            msg = f"unknown OpenCV backend {backend!r}; use one of {sorted(BACKENDS)}"
            raise SourceConfigError(msg)
        if open_timeout_s <= 0 or read_timeout_s <= 0:
            msg = f"camera timeouts must be > 0 s, got open={open_timeout_s}, read={read_timeout_s}"
            raise SourceConfigError(msg)
        if isinstance(uri, os.PathLike):
            uri = os.fspath(uri)
        if isinstance(uri, str) and uri.strip().isdigit():
            uri = int(uri.strip())  # "0" from a YAML string is the first device
        self.uri = uri
        self.open_timeout_s = float(open_timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self.close_timeout_s = float(close_timeout_s)
        self.backend = backend
        self.loop = loop
        self._pacer = Pacer(fps)
        self.name = f"opencv:{redact_uri(uri)}"
        self._factory = capture_factory or _default_factory
        self._session: _Session | None = None
        # A device never "ends": a failed read is a fault, so /dev/video0 is not a file.
        if isinstance(uri, int) or uri.startswith("/dev/"):
            self.kind = "device"
        elif _URL.match(uri):
            self.kind = "url"
        elif backend == "gstreamer" or is_gstreamer_pipeline(uri):
            self.kind = "pipeline"
        else:
            self.kind = "file"
        #: a camera, stream or pipeline runs on its own clock; a video file waits for the line
        self.live = self.kind != "file"
        self.frames = 0
        self.timeouts = 0
        self.abandoned = 0

    def _api_and_params(self) -> tuple[int, list[int]]:
        api = BACKENDS[self.backend]
        if self.kind == "pipeline" and self.backend == "auto":
            api = cv2.CAP_GSTREAMER
        params: list[int] = []
        # Only network streams need OpenCV's own timeouts, and only FFmpeg/GStreamer take
        # them: other backends refuse to open when given a parameter they do not know.
        if self.kind in ("url", "pipeline") and self.backend in ("auto", "ffmpeg", "gstreamer"):
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(self.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(self.read_timeout_s * 1000),
            ]
        return api, params

    def open(self) -> None:
        self.close()
        if self.kind == "pipeline" and not gstreamer_available():
            msg = (
                f"{self.name}: this OpenCV has no GStreamer (pip wheels do not); install Debian's "
                "python3-opencv or JetPack's OpenCV in place of opencv-python, or use an rtsp:// uri"
            )
            raise CameraConfigError(msg)
        if self.kind == "file" and "%" not in self.uri and not os.path.exists(self.uri):
            msg = f"{self.name}: video file {self.uri} not found; check the camera's uri"
            raise CameraError(msg)
        api, params = self._api_and_params()
        session = _Session(self._factory, self.uri, api, params, self.name, live=self.live)
        try:
            error = session.wait_open(self.open_timeout_s)
        except TimeoutError:
            self._abandon(session)
            msg = f"{self.name}: open timed out after {self.open_timeout_s:g}s; check the camera and network"
            raise CameraError(msg) from None
        if error is not None:
            session.stop(self.close_timeout_s)
            msg = f"{self.name}: cannot open ({error}); check the uri, the cable/network and the backend"
            raise CameraError(msg) from error
        self._session = session
        self._pacer.restart()
        log.info("%s: opened (%s)", self.name, self.kind)

    def read(self) -> Captured | None:
        session = self._session
        if session is None:
            msg = f"{self.name}: read() before open()"
            raise CameraError(msg)
        if self.kind == "file":
            self._pacer.wait()
            ok, frame, ts = self._call(session, _read)
        else:
            ok, frame, ts = self._call(session, None)
        if not ok or frame is None or frame.size == 0:
            if self.kind != "file":
                msg = f"{self.name}: read failed (stream ended or camera disconnected)"
                raise CameraError(msg)
            if not self.loop:
                return None
            ok, frame, ts = self._call(session, _rewind_and_read)
            if not ok or frame is None or frame.size == 0:
                msg = f"{self.name}: cannot restart the video from its first frame"
                raise CameraError(msg)
        self.frames += 1
        return Captured(self._check_frame(frame), ts)

    def _call(self, session: _Session, fn: Callable[[Any], Any] | None) -> Any:
        """``fn(capture)`` in the session thread, or (``None``, live) the next grabbed frame."""
        try:
            if fn is None:
                return session.next_frame(self.read_timeout_s)
            return session.call(fn, self.read_timeout_s)
        except TimeoutError:
            self.timeouts += 1
            self._session = None
            self._abandon(session)
            msg = f"{self.name}: read timed out after {self.read_timeout_s:g}s"
            raise CameraError(msg) from None
        except Exception as exc:  # a lost stream, cv2.error and friends from inside the backend
            self._session = None
            session.stop(self.close_timeout_s)
            msg = (
                f"{self.name}: {exc}" if isinstance(exc, CameraError) else f"{self.name}: read failed: {exc}"
            )
            raise CameraError(msg) from exc

    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        if frame.dtype != np.uint8:
            msg = f"{self.name}: camera gives {frame.dtype} frames, lineside needs uint8; set an 8-bit format"
            raise CameraConfigError(msg)
        if frame.ndim == 3 and frame.shape[2] == 1:
            return frame[:, :, 0]
        if frame.ndim == 3 and frame.shape[2] == 4:
            return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        return frame

    def _abandon(self, session: _Session) -> None:
        # The thread may be stuck in native code for good; tell it to exit if it ever
        # returns, and never touch its capture again.
        if not session.stop(0):
            self.abandoned += 1
            log.warning("%s: abandoned a stuck capture thread (%d so far)", self.name, self.abandoned)

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.stop(self.close_timeout_s):
            self.abandoned += 1
            log.warning("%s: release did not finish in %gs; left behind", self.name, self.close_timeout_s)
