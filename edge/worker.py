"""The inference worker: batch frames across cameras, infer, decide, report.

A worker asks the router for work with credits, so it never holds more frames
than it can process. A batch goes out when it is full or when its first frame
has waited ``max_wait_ms``: a dead camera never stalls a batch because the
batch is built from whatever arrived. Results go to the collector; the frames
a worker finished are acknowledged to the router, which counts the frames of a
worker that dies as lost.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import zmq

from converter.errors import LinesideError
from converter.package import ModelPackage
from converter.preprocessing import normalize
from edge import imageops, protocol, sockets
from edge.backends.base import Backend, BackendError
from edge.config import DecisionConfig, LineConfig
from edge.keys import CurveKeys, client_keys
from edge.postprocess import NO_DECISION, Decision, decide, merge_tiles
from edge.process import StopEvent

log = logging.getLogger(__name__)

#: seconds between heartbeats (sent from the worker's heartbeat thread)
HEARTBEAT_S = 1.0
#: while a worker is busy, done acknowledgements wait at most this long for a ready message
ACK_S = 0.2
#: a main loop that has not turned for this long (outside inference) is stuck: no more heartbeats
STUCK_AFTER_S = 30.0
#: a backend note is cut to this many characters (the heartbeat schema allows 4096)
NOTE_CHARS = 2000
#: the latency stages every result carries (docs/protocol.md); the collector adds end_to_end
WORKER_STAGES = ("capture_to_send", "queue", "worker_wait", "preprocess", "infer", "postprocess")


def select_backend(cfg: LineConfig, package: ModelPackage) -> tuple[Backend, str]:
    """The backend the config asks for, and why it was chosen (for the log)."""
    wanted = cfg.model.backend
    if wanted in ("auto", "openvino"):  # ranks TensorRT, OpenVINO, ONNX Runtime (docs/performance.md)
        from edge.backends.choice import choose_backend

        return choose_backend(cfg, package)
    if wanted == "tensorrt":
        from converter.engine.select import select_engine

        plan, why = select_engine(package)
        if plan is None:
            msg = f"backend tensorrt requested but unusable: {why}; set model.backend to auto or onnxruntime"
            raise BackendError(msg)
        from edge.backends.trt import TensorRTBackend

        return TensorRTBackend.for_package(package, plan), f"tensorrt: {why}"
    backend, why = _onnxruntime(cfg, package)
    return backend, f"onnxruntime (as configured; {why})"


def _onnxruntime(cfg: LineConfig, package: ModelPackage) -> tuple[Backend, str]:
    """ONNX Runtime on the graph it runs here (``model.precision: auto`` resolved once), and why."""
    from edge.backends.choice import onnxruntime_precision
    from edge.backends.onnxrt import OnnxRuntimeBackend

    precision, why = onnxruntime_precision(package, cfg.model.precision)
    return OnnxRuntimeBackend(package.onnx_path(precision), threads=cfg.model.threads), why


def decision_rules(cfg: LineConfig, package: ModelPackage) -> DecisionConfig:
    """The line's decision rules with the manifest's values where the config leaves them empty."""
    m, d = package.manifest, cfg.decision
    threshold = d.threshold if d.threshold is not None else m.threshold
    if d.mask_threshold is not None:
        mask_threshold = d.mask_threshold
    elif d.threshold is not None and d.threshold != m.threshold:
        # the manifest's mask threshold was chosen with the manifest's threshold
        mask_threshold = threshold
    else:
        mask_threshold = m.mask_threshold if m.mask_threshold is not None else threshold
    return dataclasses.replace(
        d,
        threshold=threshold,
        min_defect_area=d.min_defect_area if d.min_defect_area is not None else m.min_defect_area,
        mask_threshold=mask_threshold,
    )


def load_ignore_masks(cfg: LineConfig, hw: tuple[int, int]) -> dict[str, np.ndarray]:
    masks = {}
    for cam in cfg.cameras:
        if cam.ignore_mask:
            path = cfg.resolve(cam.ignore_mask)
            mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                msg = f"camera {cam.id}: ignore_mask {path} is missing or not an image"
                raise BackendError(msg)
            if mask.shape != hw:
                mask = cv2.resize(mask, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
            masks[cam.id] = mask
    return masks


class WorkerConnectError(LinesideError):
    """A worker started by hand found no line at its endpoints."""


#: exit code of a worker process that could not load its model: the supervisor does not
#: restart it (the next one would fail the same way) but stops the line
EXIT_MODEL_LOAD = 5


class ModelLoadError(LinesideError):
    """A worker could not load its model package or backend, or run it on a blank image."""

    exit_code = EXIT_MODEL_LOAD


@dataclass
class Prepared:
    """A normalized batch waiting for (or in) the backend."""

    inputs: np.ndarray
    #: (frame, first piece, end piece, tile offsets) per frame
    spans: list[tuple[Item, int, int, list[tuple[int, int]]]]
    started_at: float
    prepared_at: float


@dataclass
class Item:
    """One frame waiting in the worker."""

    header: dict[str, Any]
    image: np.ndarray | None
    received: float


class Worker:
    """See the module docstring."""

    def __init__(self, cfg: LineConfig, package: ModelPackage, backend: Backend, name: str) -> None:
        self.cfg = cfg
        self.package = package
        self.backend = backend
        self.name = name
        #: the workers this one was started in place of (they died), newest first: the router
        #: counts what they held lost when this one joins, instead of after the heartbeat timeout
        self.replaces: list[str] = []
        #: why this worker runs another backend than the config asked for ("" when it does not):
        #: logged, sent with every heartbeat, shown in /readyz and the status message
        self.backend_note = ""
        m = package.manifest
        self.hw = (m.input.height, m.input.width)
        self.channels = m.input.channels
        self.nchw = m.input.layout == "NCHW"
        self.rules = decision_rules(cfg, package)
        self.ignore = load_ignore_masks(cfg, self.hw)
        #: capped by the backend's own limit once it is active (see open_worker)
        self.max_batch = cfg.workers.max_batch
        self.max_wait = cfg.workers.max_wait_ms / 1000
        #: camera -> when this worker last sent its preview (monotonic): at most one per
        #: ``publish.preview_every_s`` per camera, whatever the frame rate
        self.preview_at: dict[str, float] = {}
        #: previews that could not be made (logged once; the result still goes, without one)
        self.preview_failures = 0
        self.stop = StopEvent()  # a signal handler sets it
        self.batch: list[Item] = []
        self.done: list[list[Any]] = []
        self._last_ready = 0.0
        self.processed = 0
        self.rejected = protocol.Rejections("work", log)
        #: frames asked of the router and not yet received
        self.credits_out = 0
        #: a batch normalized and waiting for the backend, and the one in it
        self._waiting: Prepared | None = None
        self._running: tuple[concurrent.futures.Future, Prepared] | None = None
        #: when the main loop last turned, and whether the backend is computing (heartbeats)
        self.last_tick = time.monotonic()
        self.inferring = False
        #: set once the router has answered (a welcome or a frame)
        self.connected = threading.Event()
        # Input buffers reused for every batch: no allocation on the hot path.
        shape = (
            (self.max_batch, self.channels, *self.hw)
            if self.nchw
            else (self.max_batch, *self.hw, self.channels)
        )
        self._inputs = [np.empty(shape, np.float32), np.empty(shape, np.float32)]
        self._next_slot = 0
        # Every backend call runs in this one thread: the next batch is received and
        # normalized, and the last one decided and sent, while the model computes; and a
        # CUDA context, which belongs to the thread that made it, stays on one thread.
        self._infer_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="infer")

    def on_backend_thread(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the backend's thread and wait for it."""
        return self._infer_pool.submit(fn, *args).result()

    def close(self) -> None:
        """Free the backend (on its own thread) and stop that thread."""
        self.on_backend_thread(self.backend.deactivate)
        self._infer_pool.shutdown(wait=True)

    # -- messages ------------------------------------------------------------------
    def ready(self, work: zmq.Socket, credits: int) -> None:
        """Ask for ``credits`` more frames (0: only acknowledge the frames done so far)."""
        self.credits_out += credits
        header = {
            "t": "ready",
            "worker": self.name,
            "credits": credits,
            # a router that does not know this worker (it restarted, or declared the worker
            # lost) takes the whole open count from here
            "credits_open": self.credits_out,
            "done": self.done,
            **({"replaces": self.replaces} if self.replaces else {}),
        }
        work.send(protocol.encode_header(header))
        self.done = []
        self._last_ready = time.monotonic()

    def idle(self) -> bool:
        """Nothing batched, prepared or computing: all this worker holds is decided."""
        return not self.batch and self._waiting is None and self._running is None

    def held(self) -> list[list[Any]]:
        """The frames this worker holds (received, not yet decided): for the router's ledger."""
        items = list(self.batch)
        for prepared in (self._waiting, self._running[1] if self._running else None):
            if prepared is not None:
                items.extend(span[0] for span in prepared.spans)
        return [[i.header["cam"], i.header["epoch"], i.header["seq"], i.header["tag"]] for i in items]

    def heartbeat_header(self) -> dict[str, Any] | None:
        """What the heartbeat thread sends, or None when the main loop is stuck outside
        inference (a stuck worker must be declared lost, a computing one must not)."""
        if not self.inferring and time.monotonic() - self.last_tick > STUCK_AFTER_S:
            return None
        return {
            "t": "heartbeat",
            "worker": self.name,
            "holding": self.held(),
            "credits_open": self.credits_out,
            "busy": self.inferring,
            "rejected": dict(self.rejected.counts),
            "backend_note": self.backend_note,
            **({"replaces": self.replaces} if self.replaces else {}),
        }

    def report_drop(self, results: zmq.Socket, header: dict[str, Any], reason: str) -> None:
        cam, epoch, seq = header["cam"], header["epoch"], header["seq"]
        msg = {"t": "drop", "cam": cam, "epoch": epoch, "reason": reason}
        results.send(protocol.encode_header({**msg, "seqs": [seq], "tags": [header["tag"]]}))
        self.done.append([cam, epoch, seq])

    def on_frame(self, parts: list[Any], results: zmq.Socket) -> None:
        """Validate one frame message: batch it, or report it dropped (malformed, too old)."""
        now = time.time()
        header = None
        try:
            header = protocol.decode(parts[0].bytes, protocol.FROM_ROUTER_TO_WORKER)
            self.connected.set()
            if header["t"] == "welcome":
                return
            # every frame message the router sent used one credit
            self.credits_out = max(0, self.credits_out - 1)
            if len(parts) != 2:
                raise protocol.ProtocolError(f"frame {header['cam']}#{header['seq']} in {len(parts)} part(s)")
            image = protocol.image_from_frame(header, parts[1].buffer) if header["decide"] else None
        except protocol.ProtocolError as exc:
            self.rejected(str(exc), exc.why)
            # A frame that names itself lets the ledger close it; garbage is only counted.
            if header is not None and header["t"] == "frame":
                self.report_drop(results, header, "malformed")
            return
        header["recv"] = now
        max_age = header["max_age_ms"]
        if image is not None and max_age and (now - header["ts"]) * 1000 > max_age:
            self.report_drop(results, header, "too_old")
            return
        self.batch.append(Item(header, image, time.monotonic()))

    # -- batch processing --------------------------------------------------------------
    def tiles_of(self, image: np.ndarray) -> tuple[list[np.ndarray], list[tuple[int, int]]] | None:
        """The model-sized pieces of a frame: itself, or tiles when it is larger."""
        if image.shape[:2] == self.hw:
            return [image], [(0, 0)]
        h, w = image.shape[:2]
        if h >= self.hw[0] and w >= self.hw[1]:
            plan = imageops.plan_tiles(h, w, *self.hw)
            return list(imageops.cut_tiles(image, plan, *self.hw)), plan
        return None

    def prepare(self, results: zmq.Socket) -> Prepared | None:
        """Take the waiting frames as a batch: answer faults at once, cut tiles, normalize.

        Returns None when nothing in the batch needs the model.
        """
        batch, self.batch = self.batch, []
        t0 = time.time()
        pieces: list[np.ndarray] = []
        spans: list[tuple[Item, int, int, list[tuple[int, int]]]] = []
        for item in batch:
            if item.image is None:
                reason = item.header.get("fault") or "camera fault"
                self.send_result(results, item, Decision(NO_DECISION, reason), {}, None)
                continue
            image = item.image[..., 0] if item.image.ndim == 3 and item.image.shape[2] == 1 else item.image
            tiles = self.tiles_of(image) if image.ndim == 2 else None
            if tiles is None:
                why = f"wrong shape {list(item.image.shape)}: model takes {list(self.hw)} greyscale"
                self.rejected(f"{item.header['cam']}#{item.header['seq']}: {why}")
                self.send_result(results, item, Decision(NO_DECISION, why), {}, None)
                continue
            start = len(pieces)
            pieces.extend(tiles[0])
            spans.append((item, start, len(pieces), tiles[1]))
        if not pieces:
            return None
        n = len(pieces)
        # Two input buffers, used in turn: one can be read by the backend while the
        # next batch is normalized into the other.
        slot = self._next_slot
        self._next_slot = 1 - slot
        # A GPU backend offers its pinned input memory: normalizing straight into it saves
        # the copy from pageable memory (8 MiB per batch of 8 at 512x512).
        inp = self.backend.input_buffer(n, slot)
        if inp is None or inp.shape[1:] != self._inputs[slot].shape[1:] or inp.dtype != np.float32:
            if n > self._inputs[slot].shape[0]:
                self._inputs[slot] = np.empty((n, *self._inputs[slot].shape[1:]), np.float32)
            inp = self._inputs[slot][:n]
        stacked = np.stack(pieces)
        if self.nchw:
            normalize(stacked[:, None], self.package.manifest.normalization, out=inp)
        else:
            normalize(stacked[..., None], self.package.manifest.normalization, out=inp)
        return Prepared(inp, spans, t0, time.time())

    def infer(self, prepared: Prepared) -> np.ndarray:
        """Run the backend over a prepared batch, in chunks the engine accepts."""
        n = prepared.inputs.shape[0]
        probs = np.empty((n, *self.hw), np.float32)
        step = self.backend.max_batch
        self.inferring = True
        try:
            for s in range(0, n, step):
                probs[s : s + step] = self.backend.infer(prepared.inputs[s : s + step])
        finally:
            self.inferring = False
            self.last_tick = time.monotonic()
        return probs

    def finish(self, prepared: Prepared, probs: np.ndarray, t_infer_done: float, results: zmq.Socket) -> None:
        """Decide each frame of an inferred batch and send its result."""
        t1, t2 = prepared.prepared_at, t_infer_done
        for item, start, end, plan in prepared.spans:
            ignore = self.ignore.get(item.header["cam"])
            decisions = [decide(probs[i], self.rules, ignore) for i in range(start, end)]
            empty = all(d.empty for d in decisions)
            if len(decisions) == 1:
                result, mask = decisions[0], decisions[0].mask
            elif empty:
                result, mask = merge_tiles(decisions, plan), np.zeros(item.image.shape[:2], np.uint8)
            else:
                result = merge_tiles(decisions, plan)
                h, w = item.image.shape[:2]
                maps = np.stack(
                    [d.mask if d.mask is not None else np.zeros(self.hw, np.uint8) for d in decisions]
                )
                mask = imageops.join_tiles(maps, plan, h, w)
            t3 = time.time()
            lat = {
                "preprocess": (t1 - prepared.started_at) * 1000,
                "infer": (t2 - t1) * 1000,
                "postprocess": (t3 - t2) * 1000,
            }
            self.send_result(results, item, result, lat, mask, empty=empty)

    def process(self, results: zmq.Socket) -> None:
        """Prepare, infer and finish the waiting frames in this thread (shutdown, tests)."""
        prepared = self.prepare(results)
        if prepared is not None:
            probs = self.on_backend_thread(self.infer, prepared)
            self.finish(prepared, probs, time.time(), results)

    def send_result(
        self,
        results: zmq.Socket,
        item: Item,
        d: Decision,
        lat: dict[str, float],
        mask: np.ndarray | None,
        empty: bool = False,
    ) -> None:
        """Send one decision to the collector. An ``empty`` mask (all background, most good
        parts) travels as ``mask_empty`` with its shape, not as its bytes (262 KB at 512x512)."""
        h = item.header
        now = time.time()
        sent = h.get("sent") or h["ts"]
        lat = {
            "capture_to_send": max(0.0, (sent - h["ts"]) * 1000),
            "queue": max(0.0, (h.get("recv", now) - sent) * 1000),
            "preprocess": 0.0,
            "infer": 0.0,
            "postprocess": 0.0,  # a NO_DECISION without a model run spent nothing here
            **lat,
            "worker_wait": max(0.0, (time.monotonic() - item.received) * 1000 - sum(lat.values())),
        }
        header = {
            "t": "result",
            "cam": h["cam"],
            "epoch": h.get("epoch", 0),
            "seq": h["seq"],
            "ts": h["ts"],
            "decided_ts": now,
            "decision": d.decision,
            "reason": d.reason,
            "defect_area": d.defect_area,
            "defect_count": d.defect_count,
            "boxes": d.boxes,
            "model_id": self.package.model_id,
            "worker": self.name,
            "backend": self.backend.name,
            "latency_ms": lat,
            "truth": h["truth"],
            "tag": h["tag"],
        }
        buffers: list[np.ndarray] = []
        if mask is not None and empty:
            header["mask_shape"] = list(mask.shape)
            header["mask_empty"] = True
        elif mask is not None:
            header["mask_shape"] = list(mask.shape)
            buffers.append(np.ascontiguousarray(mask))
            if d.decision == "FAIL" and item.image is not None:
                header["image_shape"] = list(item.image.shape)
                buffers.append(np.ascontiguousarray(item.image))
        preview = self.preview_of(h["cam"], item.image)
        if preview is not None:  # always the last part, after the mask and the image
            header["preview"], header["preview_shape"] = "jpeg", preview[1]
            buffers.append(preview[0])
        protocol.send_multipart(results, header, *buffers)
        self.done.append([h["cam"], h.get("epoch", 0), h["seq"]])
        self.processed += 1

    def preview_of(self, cam: str, image: np.ndarray | None) -> tuple[bytes, list[int]] | None:
        """The JPEG preview (and its shape) to send with this camera's result when one is due
        (``publish``: ``preview_px``, ``preview_every_s``), else None. It costs one resize and
        one encode of a small image, at most once per period per camera."""
        pub = self.cfg.publish
        if image is None or pub.preview_px <= 0 or image.size == 0:
            return None
        now = time.monotonic()
        last = self.preview_at.get(cam)
        if last is not None and now - last < pub.preview_every_s:
            return None
        self.preview_at[cam] = now
        try:
            return imageops.preview_jpeg(image, pub.preview_px)
        except (imageops.ImageOpsError, cv2.error) as exc:
            self.preview_failures += 1
            if self.preview_failures == 1:  # a frame format that cannot be one keeps failing: say it once
                log.warning("%s: no preview for %s (%s); results go without one", self.name, cam, exc)
            return None

    # -- main loop ------------------------------------------------------------------------
    def run(self, work: zmq.Socket, results: zmq.Socket, connect_timeout_s: float | None = None) -> None:
        """Ask for frames, batch, infer, decide, until ``stop``; then finish what it holds.

        ``connect_timeout_s``: give up (LinesideError) when no router has answered by then.
        """
        # Ask for two batches so the next one is already here when this one ends.
        self.ready(work, self.max_batch * 2)
        started = time.monotonic()
        said_at = None
        poller = zmq.Poller()
        poller.register(work, zmq.POLLIN)
        # At most one batch in the backend and one normalized batch waiting for it.
        while not self.stop.is_set():
            self.last_tick = time.monotonic()
            if connect_timeout_s is not None and not self.connected.is_set():
                said_at = self.await_router(started, connect_timeout_s, said_at)
            timeout_ms = 100
            if self.batch and self._waiting is None:
                left = self.batch[0].received + self.max_wait - time.monotonic()
                timeout_ms = max(0, int(left * 1000))
            if self._running is not None:
                timeout_ms = min(timeout_ms, 2)  # look at the backend often
            if poller.poll(timeout_ms):
                while len(self.batch) < self.max_batch:
                    try:
                        parts = work.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.rejected.guard(self.on_frame, parts, results)
            if self._running is not None and self._running[0].done():
                future, prepared = self._running
                self.finish(prepared, future.result(), time.time(), results)
                self._running = None
            due = self.batch and (
                len(self.batch) >= self.max_batch
                or time.monotonic() - self.batch[0].received >= self.max_wait
            )
            if due and self._waiting is None:
                self._waiting = self.prepare(results)
            if self._waiting is not None and self._running is None:
                self._running = (self._infer_pool.submit(self.infer, self._waiting), self._waiting)
                self._waiting = None
                if not self.backend.overlaps_host_work:
                    # Measured on 2 cores: host work beside ONNX Runtime's threads cut the
                    # line from 0.90x to 0.52x of the bare backend, so wait for it here
                    # (the heartbeat thread keeps telling the router that this worker lives).
                    concurrent.futures.wait([self._running[0]])
            if self.credits_out < self.max_batch and not self.stop.is_set():
                self.ready(work, self.max_batch * 2 - self.credits_out)
            elif self.done and (self.idle() or time.monotonic() - self._last_ready >= ACK_S):
                # An idle worker acknowledges at once: the router counts unacknowledged frames
                # against their camera's fair share, so a late ack left this worker without
                # work while the camera had a backlog (and a kill -9 then lost nothing).
                self.ready(work, 0)
        # Finish what we hold, then tell the router we are leaving.
        if self._running is not None:
            future, prepared = self._running
            self.finish(prepared, future.result(), time.time(), results)
            self._running = None
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            self.finish(waiting, self.on_backend_thread(self.infer, waiting), time.time(), results)
        while True:
            try:
                parts = work.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self.on_frame(parts, results)
        if self.batch:
            self.process(results)
        work.send(protocol.encode_header({"t": "bye", "worker": self.name, "done": self.done}))

    def await_router(self, started: float, timeout_s: float, said_at: float | None) -> float:
        """Before any router has answered: say so every 10 s (returns when it last did), and
        give up after ``timeout_s``."""
        now = time.monotonic()
        if now - started > timeout_s:
            msg = (
                f"no line answered within {timeout_s:.0f} s; start `lineside run` first, and check that "
                f"--connect names its endpoints.work and --results its endpoints.results"
            )
            if self.cfg.security.keys:  # a refused CURVE client looks to the worker like no line
                msg += "; with --keys: that the line holds this worker's public key in its authorized folder"
            raise WorkerConnectError(msg)
        if said_at is None or now - said_at >= 10:
            log.info("%s: waiting for the line (%.0f s of %.0f s)", self.name, now - started, timeout_s)
            return now
        return said_at


class Heartbeat:
    """Tells the router this worker lives, from a thread and a socket of its own.

    The main loop waits while the backend computes (a tiled 8000x8000 frame can take a
    minute), so heartbeats from it would stop exactly when the worker is busiest and get it
    declared dead. Each heartbeat also names the frames the worker holds and the credit it
    has open, so a router that restarted (or that declared this worker lost) knows it again.
    """

    def __init__(
        self,
        worker: Worker,
        ctx: zmq.Context,
        endpoint: str,
        interval_s: float = HEARTBEAT_S,
        keys: CurveKeys | None = None,
    ) -> None:
        self.worker, self.ctx, self.endpoint, self.interval_s = worker, ctx, endpoint, interval_s
        self.keys = keys
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.thread.start()
        return self

    def _run(self) -> None:
        sock = sockets.make_socket(
            self.ctx, zmq.DEALER, identity=f"{self.worker.name}/hb".encode(), sndhwm=10
        )
        try:
            sockets.connect(sock, self.endpoint, self.keys)
            while not self.stop.wait(self.interval_s):
                header = self.worker.heartbeat_header()
                if header is not None:
                    with contextlib.suppress(zmq.Again):
                        sock.send(protocol.encode_header(header), zmq.NOBLOCK)
        finally:
            sock.close(linger=0)

    def close(self) -> None:
        self.stop.set()
        if self.thread.ident is not None:  # not started when connecting failed
            self.thread.join(5)


def open_worker(cfg: LineConfig, name: str) -> Worker:
    """Load the package and backend a worker runs and try them on one blank image; any
    failure is one ModelLoadError line (a restarted worker would fail the same way)."""
    try:
        return _open_worker(cfg, name)
    except LinesideError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # a backend library's own error type: still one line
        msg = f"{cfg.resolve(cfg.model.package)}: the model failed to load ({type(exc).__name__}: {exc})"
        raise ModelLoadError(msg) from None


def _open_worker(cfg: LineConfig, name: str) -> Worker:
    import multiprocessing

    package = ModelPackage.open(cfg.resolve(cfg.model.package))
    # the supervisor checked the package before the line started, but a worker (re)starts
    # later, or on another machine: the graph it loads must still be the exported one
    unchecked = package.verify()
    if unchecked and multiprocessing.parent_process() is None:  # by hand; a supervisor warned already
        log.warning(
            "%s: no sha256 recorded for %s; re-run `lineside export`", package.root, ", ".join(unchecked)
        )
    backend, why = select_backend(cfg, package)
    try:
        worker = _start_backend(cfg, package, backend, name)
        if cfg.model.backend == "auto":  # lineside chose: say what and why where operators look
            worker.backend_note = f"auto: {why}"[:NOTE_CHARS]
    except LinesideError as exc:
        if cfg.model.backend != "auto" or backend.name != "tensorrt":
            raise
        # auto: an engine that fits this machine on paper can still fail to start (a driver
        # too old for this TensorRT's CUDA, GPU memory taken): the line runs on ONNX Runtime
        note = f"tensorrt unusable, running onnxruntime instead: {exc}"
        log.warning("%s: %s", name, note)
        backend = _onnxruntime(cfg, package)[0]
        why = "onnxruntime (TensorRT failed to start, see above)"
        worker = _start_backend(cfg, package, backend, name)
        worker.backend_note = note[:NOTE_CHARS]
    log.info("%s: backend %s — %s", name, backend.describe(), why)
    r = worker.rules
    log.info(
        "%s: decides at threshold %g with regions of at least %d px; draws the mask at %g",
        name,
        r.threshold,
        r.min_defect_area,
        r.mask_threshold,
    )
    return worker


def _start_backend(cfg: LineConfig, package: ModelPackage, backend: Backend, name: str) -> Worker:
    """A worker on ``backend``, activated and tried on one blank image; on failure whatever
    was made is freed (on the backend's thread) before the error goes up."""
    if backend.name == "onnxruntime":
        package.check_graph_file(backend.onnx_path)  # the graph it holds, not a precision resolved again
    worker = Worker(cfg, package, backend, name)
    try:
        try:
            worker.on_backend_thread(backend.activate)
            # One blank image through the model: an engine or graph that cannot take the
            # manifest's input fails here, once, instead of on every batch of the line.
            m = package.manifest
            c, h, w = m.input.channels, m.input.height, m.input.width
            blank = np.zeros((1, c, h, w) if worker.nchw else (1, h, w, c), np.float32)
            out = worker.on_backend_thread(backend.infer, blank)
            if out.shape != (1, h, w):
                msg = (
                    f"{backend.describe()}: a {h}x{w} image gave an output of shape {list(out.shape)}, "
                    f"the line needs [1, {h}, {w}] as manifest.json says; re-run `lineside export`"
                )
                raise ModelLoadError(msg)
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                worker.on_backend_thread(backend.deactivate)
            raise
    except BaseException:
        worker._infer_pool.shutdown(wait=False)
        raise
    worker.max_batch = min(cfg.workers.max_batch, backend.max_batch)  # an engine profile may cap it
    return worker


def worker_name(index: int) -> str:
    """A worker process's name: its host, its index and a token of its own (a restarted
    worker is another process, with another name)."""
    return f"{os.uname().nodename}-w{index}-{uuid.uuid4().hex[:6]}"


def worker_main(
    cfg_dict: dict,
    index: int,
    log_level: int,
    endpoints: dict | None = None,
    ready: Any = None,
    connect_timeout_s: float | None = None,
    name: str | None = None,
    replaces: tuple[str, ...] = (),
) -> None:
    """Entry point of a worker process (spawned locally, or started by `lineside worker`,
    which passes ``endpoints`` and ``connect_timeout_s`` and stops on Ctrl-C). A supervisor
    names its workers, and a restarted one the workers it ``replaces`` (newest first)."""
    from edge.config import from_dict
    from edge.process import die_with_parent, leave_run_dir, setup_process

    cfg = from_dict(cfg_dict)
    name = name or worker_name(index)
    by_hand = endpoints is not None
    setup_process(f"worker:{index}", log_level)
    endpoints = endpoints or {"work": cfg.endpoint("work"), "results": cfg.endpoint("results")}
    keys = client_keys(cfg, [endpoints["work"], endpoints["results"]])
    worker = open_worker(cfg, name)
    worker.replaces = list(replaces)
    stop = worker.stop.set
    if not by_hand:
        die_with_parent(stop)
    signal.signal(signal.SIGTERM, lambda *_: stop())
    # Under a supervisor, it decides when to stop; by hand, Ctrl-C stops the worker.
    signal.signal(signal.SIGINT, (lambda *_: stop()) if by_hand else signal.SIG_IGN)
    ctx = zmq.Context()
    work = sockets.make_socket(ctx, zmq.DEALER, identity=name.encode(), rcvhwm=1000, sndhwm=1000)
    results = sockets.make_socket(ctx, zmq.PUSH, sndhwm=10000, linger_ms=2000)
    heartbeat = Heartbeat(worker, ctx, endpoints["work"], keys=keys)
    try:
        sockets.connect(work, endpoints["work"], keys)
        sockets.connect(results, endpoints["results"], keys)
        heartbeat.start()
        if ready is not None:
            ready.set()
        if by_hand:
            log.info(
                "%s: connecting to the line at %s (results to %s)",
                name,
                endpoints["work"],
                endpoints["results"],
            )
            if keys is not None:
                log.info("%s: CURVE client %s/clients/%s", name, keys.folder, keys.client_name())
        worker.run(work, results, connect_timeout_s)
    finally:
        heartbeat.close()
        worker.close()
        sockets.close_all(ctx, work, results)
        leave_run_dir(cfg.run_dir)
