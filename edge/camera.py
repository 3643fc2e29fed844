"""The camera process: capture, check, shape and publish frames to the router.

One process per camera, so a camera that hangs or crashes never touches the
others. Every captured frame gets the next per-camera sequence number and ends
as a frame message or a counted drop; the drops and the camera's state travel
to the collector in periodic ``stats`` messages.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import logging
import queue
import signal
import threading
import time
from typing import Any

import numpy as np
import zmq

from edge import imageops, protocol, sockets
from edge.config import CameraConfig, LineConfig, stage_marks
from edge.process import StopEvent
from edge.sources.backoff import Backoff
from edge.sources.base import CameraError, Captured, FrameSource, make_source

log = logging.getLogger(__name__)

#: seconds between stats messages
STATS_INTERVAL_S = 0.5
#: a camera with frames waiting and no credit asks the router again after this long (a
#: restarted router does not know the camera)
HELLO_AGAIN_S = 1.0


def build_source(cam: CameraConfig) -> FrameSource:
    """The frame source a camera config names (options are checked against its signature)."""
    options = dict(cam.options)
    if cam.source == "synthetic":
        options.setdefault("name", cam.id)
    if cam.source == "opencv":
        options.setdefault("open_timeout_s", cam.open_timeout_s)
        options.setdefault("read_timeout_s", cam.read_timeout_s)
    return make_source(cam.source, **options)


class _CaptureThread:
    """A daemon thread that runs capture calls one at a time.

    Daemon, so that a capture stuck forever in a C library cannot keep the
    camera process from exiting (a ThreadPoolExecutor thread would be joined).
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="capture", daemon=True).start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            fn, future = job
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, which decides
                future.set_exception(exc)


class DeadlineReader:
    """Runs ``open``/``read`` of a source in a helper thread with a deadline.

    Capture libraries can block forever (OpenCV on a dead RTSP stream). When the
    deadline passes, the stuck thread is abandoned and a fresh one serves the
    next attempt: the watchdog that restarts a capture that has stuck.
    """

    def __init__(self, stop: threading.Event) -> None:
        #: set on shutdown: a call in progress is abandoned at once instead of at its deadline
        self.stop = stop
        self._thread = _CaptureThread()

    def call(self, fn: Any, timeout_s: float, what: str, tick: Any = None) -> Any:
        """``fn()`` in the capture thread; CameraError past ``timeout_s``. ``tick()`` runs in
        the caller's thread every few ms meanwhile (the camera keeps serving the line)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._thread.jobs.put((fn, future))
        deadline = time.monotonic() + timeout_s
        while not future.done():
            left = deadline - time.monotonic()
            if left <= 0 or self.stop.is_set():
                self._abandon()
                why = "stopping" if self.stop.is_set() else f"timed out after {timeout_s:g} s"
                msg = f"{what} {why}"
                raise CameraError(msg)
            concurrent.futures.wait([future], timeout=min(left, 0.01))
            if tick is not None and not future.done():
                tick()
        return future.result()

    def _abandon(self) -> None:
        """Leave the stuck thread behind (it ends once its call returns); use a fresh one."""
        self._thread.jobs.put(None)
        self._thread = _CaptureThread()

    def close(self) -> None:
        self._thread.jobs.put(None)


def frame_digest(image: np.ndarray) -> bytes:
    """A cheap fingerprint (strided sample) used to spot a frozen camera."""
    return hashlib.blake2b(np.ascontiguousarray(image[::7, ::7]).tobytes(), digest_size=16).digest()


def check_frame(image: np.ndarray, last_digest: bytes | None) -> tuple[str | None, bytes]:
    """Return (fault reason or None, digest). A black or repeated frame is a fault, never a part."""
    digest = frame_digest(image)
    sample = image[::7, ::7]
    if int(sample.max()) <= 8:
        return "black frame", digest
    if digest == last_digest:
        return "repeated frame (camera frozen?)", digest
    return None, digest


#: A frame (after the ROI) with a side below 1/MIN_SIDE_DIVISOR of the model input's side
#: is refused as NO_DECISION instead of resized. Resizing it up stretches each of its
#: pixels into a block more than 4 model pixels wide: a defect a few model pixels wide was
#: less than one pixel of the frame, so the frame cannot show what the model looks for, and
#: the model, trained at its own scale, sees a smooth blur whose likely verdict is a PASS
#: nobody earned (a 1x1 image was decided PASS). Up to 4x still admits a camera or ROI
#: coarser than the training images; a fraction scales with the model, a pixel floor not.
MIN_SIDE_DIVISOR = 4


class FrameTooSmall(ValueError):
    """A frame below the minimum size for the model; the message is the NO_DECISION reason."""


def min_frame_hw(input_hw: tuple[int, int], fit: str) -> tuple[int, int]:
    """The smallest frame (after the ROI) a camera sends to a model of ``input_hw``.

    ``fit: tile`` cuts model-sized tiles at full resolution, so the frame must hold one
    tile; ``fit: resize`` allows down to a quarter of each side (``MIN_SIDE_DIVISOR``).
    """
    if fit == "tile":
        return input_hw
    return (-(-input_hw[0] // MIN_SIDE_DIVISOR), -(-input_hw[1] // MIN_SIDE_DIVISOR))


def check_size(frame_hw: tuple[int, int], input_hw: tuple[int, int], fit: str) -> None:
    """Raise FrameTooSmall when a frame is below ``min_frame_hw``; sizes are WxH in the reason."""
    min_h, min_w = min_frame_hw(input_hw, fit)
    h, w = frame_hw
    if h < min_h or w < min_w:
        why = "one tile" if fit == "tile" else f"1/{MIN_SIDE_DIVISOR} of each side"
        msg = (
            f"image {w}x{h} is below the minimum {min_w}x{min_h} for a {input_hw[1]}x{input_hw[0]} "
            f"model (fit: {fit}, {why}); use larger images or a larger roi"
        )
        raise FrameTooSmall(msg)


class CameraLoop:
    """Capture -> shape -> send, with reconnect, an fps limit, a drop policy and credits.

    Frames go to the router only as far as it has given credit (``CAMERA_WINDOW``), so a
    backlog waits here, in a bounded buffer that is counted, and never in a socket shared
    with other cameras. Counters go straight to the collector on a socket of their own.
    A live camera that is down publishes NO_DECISION ("camera down: ...") at its due rate
    (its fps, or once a second when it has none), so a PLC that listens to one camera's
    results learns of the outage without reading anything else. A recording (video file,
    folder) is read at its own pace: a lossless replay pauses while the line is busy
    instead of dropping frames, and at its end the camera waits until every frame has gone
    to the router (the supervisor bounds that wait by the ledger's progress).
    """

    def __init__(self, cfg: LineConfig, cam: CameraConfig, input_hw: tuple[int, int]) -> None:
        self.cfg, self.cam = cfg, cam
        self.input_hw = input_hw
        self.stop = StopEvent()  # a signal handler sets it
        #: names this camera process: a restarted camera starts a new epoch at seq 0
        self.epoch = time.time_ns() // 1_000_000
        #: tags its frames and seals its messages (edge/protocol.py)
        self.key = cfg.key
        self.seq = 0
        self.drops: dict[str, list[int]] = collections.defaultdict(list)
        self.connected = False
        self.disconnects = 0
        self.reconnects = 0
        self.last_connected_ts = 0.0
        self.gap_s = 0.0
        self._gap_start: float | None = None
        self._last_digest: bytes | None = None
        self._sent = 0
        # lossless: frames waiting for credit; latest: at most the freshest one
        maxlen = cam.buffer if cam.policy == "lossless" else 1
        self.pending: collections.deque[tuple[dict, np.ndarray]] = collections.deque(maxlen=maxlen)
        self._last_buffer_warning = 0.0
        #: frames the router will still take (its credit); see protocol.CAMERA_WINDOW
        self.credits = 0
        self._heard_router = 0.0
        self._last_hello = 0.0
        self._last_stats = 0.0
        #: why the camera is down (None while it delivers), and when its next NO_DECISION is due
        self.down: str | None = None
        self._down_due = 0.0
        self.down_period = 1.0 / cam.fps if cam.fps > 0 else 1.0
        self.frames: zmq.Socket | None = None
        self.stats: zmq.Socket | None = None
        #: the source reached its end (a recording); the frames still pending go out first
        self.ended = False

    # -- shaping -----------------------------------------------------------------
    def shape(self, image: np.ndarray) -> np.ndarray:
        image = imageops.crop_roi(image, tuple(self.cam.roi) if self.cam.roi else None)
        image = imageops.to_gray(image)
        check_size(image.shape[:2], self.input_hw, self.cam.fit)
        if self.cam.fit == "resize" and image.shape[:2] != self.input_hw:
            image = imageops.resize_to(image, self.input_hw)
        return np.ascontiguousarray(image)

    # -- sending -----------------------------------------------------------------
    def enqueue(self, header: dict, image: np.ndarray) -> None:
        if len(self.pending) == self.pending.maxlen:
            if self.cam.policy == "latest":
                old = self.pending.popleft()
                self.drops["superseded"].append(old[0]["seq"])
            else:
                self.drops["camera_buffer_full"].append(header["seq"])
                now = time.monotonic()
                if now - self._last_buffer_warning > 5:
                    self._last_buffer_warning = now
                    log.warning(
                        "%s: lossless buffer full (%d frames): the line is slower than the camera; "
                        "dropping frames (counted as camera_buffer_full)",
                        self.cam.id,
                        self.cam.buffer,
                    )
                return
        self.pending.append((header, image))

    def hello(self) -> None:
        """Announce this camera (epoch, policy) to the router and ask for credit."""
        header = {
            "t": "hello",
            "cam": self.cam.id,
            "epoch": self.epoch,
            "policy": self.cam.policy,
            "credits": self.credits,
        }
        with contextlib.suppress(zmq.Again):
            self.frames.send_multipart(protocol.seal(self.key, header), zmq.NOBLOCK)
        self._last_hello = time.monotonic()

    def receive_credits(self) -> None:
        while True:
            try:
                parts = self.frames.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                if len(parts) != 2 or not protocol.unseal(self.key, parts[0], parts[1]):
                    raise protocol.ProtocolError("not sealed by this line")
                header = protocol.decode(parts[0], protocol.FROM_ROUTER_TO_CAMERA)
            except protocol.ProtocolError as exc:
                log.warning("%s: message on the frames socket ignored: %s", self.cam.id, exc)
                continue
            self._heard_router = time.monotonic()
            self.credits += header["n"]
        # A router that restarted does not know this camera: ask again while frames wait.
        now = time.monotonic()
        quiet = now - max(self._heard_router, self._last_hello)
        if self.pending and self.credits <= 0 and quiet >= HELLO_AGAIN_S:
            self.hello()

    def flush(self) -> None:
        while self.pending and self.credits > 0:
            header, image = self.pending[0]
            header["sent"] = time.time()
            try:
                protocol.send_multipart(self.frames, header, image, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self.pending.popleft()
            self.credits -= 1
            self._sent += 1

    def send_stats(self, final: bool = False) -> bool:
        """Send counters and drops; False when the socket is full (drops are kept for later)."""
        header = {
            "t": "stats",
            "cam": self.cam.id,
            "epoch": self.epoch,
            "policy": self.cam.policy,
            "captured": self.seq,
            "sent": self._sent,
            # every seq below this has gone to the router or is in ``drops``
            "pending_from": self.pending[0][0]["seq"] if self.pending else self.seq,
            "drops": {k: v for k, v in self.drops.items() if v},
            "connected": self.connected,
            "down": self.down,
            "disconnects": self.disconnects,
            "reconnects": self.reconnects,
            "last_connected_ts": self.last_connected_ts,
            "gap_s": self.gap_s + (time.monotonic() - self._gap_start if self._gap_start else 0.0),
            "pending": len(self.pending),
            "ended": self.ended,
            "final": final,
        }
        self._last_stats = time.monotonic()
        try:
            self.stats.send_multipart(protocol.seal(self.key, header), zmq.NOBLOCK)
        except zmq.Again:
            return False  # drops stay in the lists and go out with the next stats message
        self.drops = collections.defaultdict(list)
        return True

    def service(self) -> None:
        """What the camera owes the line at any moment, also while it waits for its source:
        take credit, send frames, send stats, and report a camera that is down."""
        self.receive_credits()
        self.flush()
        now = time.monotonic()
        if self.down is not None and now >= self._down_due:
            self._down_due = max(self._down_due + self.down_period, now)
            self.emit_fault(f"camera down: {self.down}")
            self.flush()
        if now - self._last_stats >= STATS_INTERVAL_S:
            self.send_stats()

    # -- capture -----------------------------------------------------------------
    def next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    def emit_fault(self, reason: str) -> None:
        """A camera fault becomes an explicit NO_DECISION frame, never silence or PASS."""
        seq = self.next_seq()
        empty = np.zeros((1, 1), np.uint8)
        header = protocol.frame_header(
            self.cam.id,
            seq,
            time.time(),
            empty,
            sent_ts=0.0,
            max_age_ms=0.0,
            decide=False,
            policy=self.cam.policy,
            epoch=self.epoch,
            key=self.key,
        )
        header["fault"] = reason
        self.enqueue(header, empty)

    def emit(self, captured: Captured) -> None:
        if captured.fault is not None:  # an item the source could not read: counted, never skipped
            self.emit_fault(captured.fault)
            return
        seq = self.next_seq()
        truth = captured.truth
        fault, self._last_digest = check_frame(captured.image, self._last_digest)
        try:
            image = self.shape(captured.image)
        except Exception as exc:  # a wrong ROI or a corrupt buffer is a fault of this frame only
            why = str(exc) if isinstance(exc, FrameTooSmall) else f"cannot shape frame: {exc}"
            fault, image = why, np.zeros((1, 1), np.uint8)
        header = protocol.frame_header(
            self.cam.id,
            seq,
            captured.capture_ts,
            image,
            sent_ts=0.0,
            truth=truth,
            max_age_ms=self.cam.max_age_ms,
            decide=fault is None,
            policy=self.cam.policy,
            epoch=self.epoch,
            key=self.key,
        )
        if fault:
            header["fault"] = fault
        self.enqueue(header, image)

    def set_connected(self, up: bool) -> None:
        now = time.monotonic()
        changed = up != self.connected
        if up and not self.connected:
            if self._gap_start is not None:
                self.gap_s += now - self._gap_start
                self.reconnects += 1
            self._gap_start = None
            self.last_connected_ts = time.time()
        elif not up and self.connected:
            self.disconnects += 1
            self._gap_start = now
        elif not up and self._gap_start is None:
            self._gap_start = now
        self.connected = up
        if up:
            self.down = None
        if changed and self.stats is not None:
            self.send_stats()  # readiness follows the camera's state at once, not at the next tick

    def went_down(self, why: str) -> None:
        """The source failed: NO_DECISION now, and at the due rate until it delivers again."""
        self.set_connected(False)
        if self.down is None:
            self.emit_fault(f"camera down: {why}")
            self._down_due = time.monotonic() + self.down_period
        self.down = why
        self.send_stats()

    def run(self, frames: zmq.Socket, stats: zmq.Socket) -> None:
        self.frames, self.stats = frames, stats
        cam = self.cam
        backoff = Backoff(initial_s=cam.reconnect_initial_s, cap_s=cam.reconnect_max_s)
        reader = DeadlineReader(self.stop)
        # One source object for the camera's life: a reconnect closes and re-opens it.
        source = build_source(cam)
        # An OpenCV source keeps its own (native) deadlines; ours is the backstop.
        margin = 1.0 if cam.source == "opencv" else 0.0
        replay = not source.live
        is_open = ended = False
        period = 1.0 / cam.fps if cam.fps > 0 else 0.0
        next_due = time.monotonic()
        self.hello()
        try:
            while not self.stop.is_set():
                self.service()
                if not is_open:
                    try:
                        reader.call(source.open, cam.open_timeout_s + margin, f"{cam.id}: open", self.service)
                    except CameraError as exc:
                        if self.stop.is_set():
                            break
                        self.went_down(f"cannot open ({exc})")
                        delay = backoff.next_delay()
                        log.warning("%s: cannot open (%s); retry in %.1f s", cam.id, exc, delay)
                        self._close_source(source)
                        self.wait(delay)
                        continue
                    is_open = True
                    self.set_connected(True)
                    backoff.reset()
                    log.info("%s: connected (%s)", cam.id, cam.source)
                if period:
                    wait = next_due - time.monotonic()
                    if wait > 0:
                        self.wait(wait)
                        if self.stop.is_set():
                            break
                    next_due = max(next_due + period, time.monotonic() - period)
                # A lossless replay waits for room instead of dropping: the file can wait.
                while replay and cam.policy == "lossless" and len(self.pending) >= cam.buffer:
                    self.wait(0.01)
                    if self.stop.is_set():
                        break
                try:
                    captured = reader.call(
                        source.read, cam.read_timeout_s + margin, f"{cam.id}: read", self.service
                    )
                except CameraError as exc:
                    self._close_source(source)
                    is_open = False
                    if self.stop.is_set():
                        break
                    log.warning("%s: camera fault (%s); reconnecting", cam.id, exc)
                    self.went_down(str(exc))
                    self.wait(backoff.next_delay())
                    continue
                if captured is None:
                    log.info("%s: end of stream after %d frames", cam.id, self.seq)
                    ended = True
                    break
                self.emit(captured)
                self.flush()
        finally:
            self._close_source(source)
            reader.close()
            self.set_connected(False)
            if ended and not self.stop.is_set():
                self._send_all()
            self._drain()

    def wait(self, seconds: float) -> None:
        """Sleep, but keep serving the line (credits, frames, stats, faults); wake at once on stop."""
        end = time.monotonic() + seconds
        while not self.stop.is_set():
            self.service()
            left = end - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, 0.005 if self.pending else 0.05))

    def _send_all(self) -> None:
        """At the natural end of a recording: send every pending frame as the router takes them.
        Waiting is bounded by the supervisor, which stops the line (and this camera) when the
        ledger has made no progress for ``shutdown_timeout_s``."""
        self.ended = True
        self.send_stats()
        while self.pending and not self.stop.is_set():
            self.wait(0.05)

    def stop_budget_s(self) -> float:
        """How long this camera's own stop may wait (pending frames, final stats, the sockets'
        linger): half of the time the supervisor gives the cameras' stage (``stage_marks``), so
        that the process's exit fits in the other half on a loaded box too. (CI once killed a
        camera at the 1.5 s mark whose waits alone could take 2 s.)"""
        return stage_marks(self.cfg.shutdown_timeout_s)[0] / 2

    def _drain(self) -> None:
        """At shutdown: give pending frames a short chance, then count the rest as dropped."""
        budget = self.stop_budget_s()
        end = time.monotonic() + 0.6 * budget
        while self.pending and time.monotonic() < end:
            self.receive_credits()
            self.flush()
            time.sleep(0.005)
        for header, _ in self.pending:
            self.drops["shutdown"].append(header["seq"])
        self.pending.clear()
        deadline = time.monotonic() + 0.2 * budget
        while not self.send_stats(final=True) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _close_source(self, source: FrameSource) -> None:
        try:
            source.close()
        except Exception as exc:  # closing a broken capture must not kill the camera loop
            log.debug("%s: close failed: %s", self.cam.id, exc)


def camera_main(cfg_dict: dict, camera_index: int, input_hw: tuple[int, int], log_level: int) -> None:
    """Entry point of a spawned camera process."""
    from edge.config import from_dict
    from edge.keys import line_keys
    from edge.process import die_with_parent, leave_run_dir, setup_process

    cfg = from_dict(cfg_dict)
    cam = cfg.cameras[camera_index]
    setup_process(f"camera:{cam.id}", log_level)
    loop = CameraLoop(cfg, cam, input_hw)
    die_with_parent(loop.stop.set)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop.set())
    signal.signal(signal.SIGINT, lambda *_: loop.stop.set())
    ctx = zmq.Context()
    # Frames wait in the camera's own bounded buffer (where they are counted) until the
    # router gives credit; the socket itself never holds more than that credit.
    frames = sockets.make_socket(ctx, zmq.DEALER, sndhwm=64, rcvhwm=1000)
    stats = sockets.make_socket(ctx, zmq.PUSH, sndhwm=1000)
    try:
        keys = line_keys(cfg)
        sockets.connect(frames, cfg.endpoint("frames"), keys)
        sockets.connect(stats, cfg.endpoint("results"), keys)
        loop.run(frames, stats)
    finally:
        # what is still queued has the rest of the stop budget to leave (frames went out on credit)
        sockets.close_all(ctx, frames, stats, linger_ms=int(200 * loop.stop_budget_s()))
        leave_run_dir(cfg.run_dir)
