"""The collector: accounting, publishing, persistence, metrics and status.

Results and drops from every worker and the router arrive on one PULL socket.
The collector keeps the ledger (captured = decided + dropped + in flight),
republishes results on a PUB socket for PLC/MES bridges and UIs
(docs/protocol.md), writes every decision to the SQLite log, keeps NG images
and masks, exports Prometheus metrics with health endpoints, and prints a
status line every few seconds.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from edge import protocol, sockets
from edge.accounting import Ledger
from edge.config import LineConfig
from edge.metrics import LineMetrics, serve_http
from edge.sinks import SinkError

log = logging.getLogger(__name__)

#: decisions written to SQLite in one transaction, at most this often
LOG_FLUSH_S = 0.25
#: decisions kept in memory while the decision log cannot be written
MAX_PENDING_LOG = 100_000
#: end-to-end latencies kept for the status line percentiles
LATENCY_WINDOW = 2000


class NgWriter:
    """Saves NG images in a thread, so PNG encoding never delays publishing.

    The queue is bounded: in a burst of FAILs beyond it, entries are skipped and
    counted (the decision itself is still published and logged).
    """

    def __init__(self, store: Any, depth: int = 64) -> None:
        self.store = store
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.skipped = 0
        self.failures = 0
        self.thread = threading.Thread(target=self._run, name="ng-writer", daemon=True)
        self.thread.start()

    def submit(self, cam: str, epoch: int, seq: int, image: np.ndarray, mask: np.ndarray, meta: dict) -> None:
        try:
            self.queue.put_nowait((cam, epoch, seq, image, mask, meta))
        except queue.Full:
            self.skipped += 1
            if self.skipped == 1 or self.skipped % 100 == 0:
                log.warning("NG store busy: %d NG image(s) not saved so far", self.skipped)

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            cam, epoch, seq, image, mask, meta = item
            try:
                self.store.save(cam, seq, image, mask, meta, epoch=epoch)
            except Exception as exc:  # a full disk must not stop the line: count it and say so
                self.failures += 1
                if self.failures <= 3 or self.failures % 100 == 0:
                    log.error("NG store: cannot save %s#%d: %s", cam, seq, exc)

    def close(self, timeout_s: float = 5.0) -> None:
        self.queue.put(None)
        self.thread.join(timeout_s)


class Collector:
    """See the module docstring."""

    def __init__(self, cfg: LineConfig, started: float | None = None) -> None:
        self.cfg = cfg
        self.ledger = Ledger()
        self.metrics = LineMetrics()
        self.stop = threading.Event()
        self.started = started or time.time()
        self.e2e: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.pending_log: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.router: dict[str, Any] = {}
        self.cameras: dict[str, dict[str, Any]] = {}
        self.camera_seen: dict[str, float] = {}
        self.supervisor: dict[str, Any] = {}
        self.backends: collections.Counter = collections.Counter()
        #: (truth, decision) -> count, for frames whose source knew the ground truth
        self.scored: collections.Counter = collections.Counter()
        self.rejected = protocol.Rejections("results", log)
        self.last_tick = time.monotonic()
        self._fps_marks: dict[str, tuple[float, int]] = {}
        self._status_mark = (time.monotonic(), 0)
        self.decision_log = None
        self.ng_store = None
        self.ng_writer: NgWriter | None = None
        self.log_errors = 0
        #: decisions that never reached the log (it failed for longer than MAX_PENDING_LOG allows)
        self.log_lost = 0

    def open_sinks(self) -> None:
        sinks = self.cfg.sinks
        if sinks.decision_log:
            from edge.sinks.decision_log import DecisionLog

            self.decision_log = DecisionLog(self.cfg.resolve(sinks.decision_log))
        if sinks.ng_store:
            from edge.sinks.ng_store import NgStore

            self.ng_store = NgStore(
                self.cfg.resolve(sinks.ng_store), int(sinks.ng_store_max_mb * 1024 * 1024)
            )
            self.ng_writer = NgWriter(self.ng_store)

    # -- messages ------------------------------------------------------------------
    def on_message(self, parts: list[Any], pub: zmq.Socket) -> None:
        try:
            header = protocol.decode_header(parts[0].bytes)
        except protocol.ProtocolError as exc:
            self.on_malformed(str(exc))
            return
        kind = header["t"]
        try:
            if kind == "result":
                self.on_result(header, parts, pub)
            elif kind == "drop":
                for seq in header["seqs"]:
                    if self.ledger.dropped(header["cam"], header.get("epoch", 0), int(seq), header["reason"]):
                        self.metrics.drops.labels(header["cam"], header["reason"]).inc()
            elif kind == "stats":
                self.on_camera_stats(header)
            elif kind == "router_stats":
                frames_rejected = int(header.get("malformed", 0)) - int(self.router.get("malformed", 0))
                if frames_rejected > 0:
                    self.metrics.malformed.labels("frames").inc(frames_rejected)
                self.router = header
                for cam, depth in header.get("queues", {}).items():
                    self.metrics.queue_depth.labels(cam).set(depth)
                self.metrics.workers.set(header.get("workers", 0))
            elif kind == "supervisor":
                self.supervisor = header
            else:
                self.on_malformed(f"unknown message kind {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            self.on_malformed(f"{kind} message missing or bad field: {exc!r}")

    def on_malformed(self, why: str) -> None:
        self.rejected(why)
        self.metrics.malformed.labels("results").inc()

    def on_camera_stats(self, h: dict[str, Any]) -> None:
        cam, epoch = h["cam"], h.get("epoch", 0)
        self.ledger.captured(cam, epoch, int(h["captured"]))
        for reason, seqs in h.get("drops", {}).items():
            for seq in seqs:
                if self.ledger.dropped(cam, epoch, int(seq), reason):
                    self.metrics.drops.labels(cam, reason).inc()
        prev = self.cameras.get(cam, {})
        if h["captured"] != prev.get("captured"):
            self.camera_seen[cam] = time.monotonic()
        self.cameras[cam] = h
        m = self.metrics
        m.captured.labels(cam).set(h["captured"])
        m.connected.labels(cam).set(1 if h.get("connected") else 0)
        m.disconnects.labels(cam).set(h.get("disconnects", 0))
        m.reconnects.labels(cam).set(h.get("reconnects", 0))
        m.gap_seconds.labels(cam).set(h.get("gap_s", 0.0))
        m.last_connected.labels(cam).set(h.get("last_connected_ts", 0.0))
        m.camera_pending.labels(cam).set(h.get("pending", 0))
        now = time.monotonic()
        mark = self._fps_marks.get(cam)
        if mark is None or now - mark[0] >= 2.0:
            if mark is not None:
                m.camera_fps.labels(cam).set((h["captured"] - mark[1]) / (now - mark[0]))
            self._fps_marks[cam] = (now, h["captured"])

    def on_result(self, h: dict[str, Any], parts: list[Any], pub: zmq.Socket) -> None:
        cam, epoch, seq, outcome = h["cam"], h.get("epoch", 0), int(h["seq"]), h["decision"]
        if not self.ledger.decided(cam, epoch, seq, outcome):
            log.debug("duplicate result %s#%d ignored", cam, seq)
            return
        now = time.time()
        lat = dict(h.get("latency_ms", {}))
        lat["end_to_end"] = (now - h["ts"]) * 1000
        h["latency_ms"] = lat
        self.e2e.append(lat["end_to_end"])
        self.backends[h.get("backend", "?")] += 1
        truth = (h.get("truth") or {}).get("defective")
        if truth is not None:  # synthetic cameras know the answer: score the line against it
            self.scored[("defective" if truth else "clean", outcome)] += 1
        m = self.metrics
        m.decisions.labels(cam, outcome).inc()
        for stage, ms in lat.items():
            m.latency.labels(stage).observe(ms / 1000)
        mask_bytes = parts[1].bytes if len(parts) > 1 else b""
        # Publish first: subscribers should not wait for the disk.
        header_out = {k: v for k, v in h.items() if k not in ("t", "image_shape")}
        # PUB drops for a subscriber at its HWM instead of blocking: a stalled UI never stalls the line.
        pub.send_multipart([b"result." + cam.encode(), protocol.encode_header(header_out), mask_bytes])
        self.pending_log.append(
            {
                "camera_id": cam,
                "epoch": epoch,
                "seq": seq,
                "capture_ts": h["ts"],
                "decided_ts": h.get("decided_ts", now),
                "decision": outcome,
                "reason": h.get("reason", ""),
                "defect_area": h.get("defect_area", 0),
                "defect_count": h.get("defect_count", 0),
                "boxes": h.get("boxes", []),
                "model_id": h.get("model_id", ""),
                "worker_id": h.get("worker", ""),
                "backend": h.get("backend", ""),
                "latencies": lat,
                "truth": h.get("truth"),
            }
        )
        if outcome == "FAIL" and self.ng_writer is not None and len(parts) >= 3 and "image_shape" in h:
            mask = np.frombuffer(parts[1].buffer, np.uint8).reshape(h["mask_shape"])
            image = np.frombuffer(parts[2].buffer, np.uint8).reshape(h["image_shape"])
            meta = {k: h.get(k) for k in ("reason", "boxes", "model_id", "defect_area")}
            self.ng_writer.submit(cam, epoch, seq, image, mask, {**meta, "capture_ts": h["ts"]})

    def flush_log(self, force: bool = False) -> None:
        if not self.pending_log:
            return
        if not force and time.monotonic() - self.last_flush < LOG_FLUSH_S:
            return
        self.last_flush = time.monotonic()
        if self.decision_log is None:
            self.pending_log = []
            return
        try:
            self.decision_log.write_many(self.pending_log)
        except SinkError as exc:
            # Keep the decisions (bounded) and retry: a full disk that is freed loses nothing.
            self.log_errors += 1
            if self.log_errors == 1 or self.log_errors % 100 == 0:
                log.error("decision log: %s (%d decisions waiting)", exc, len(self.pending_log))
            if len(self.pending_log) > MAX_PENDING_LOG:
                lost = len(self.pending_log) - MAX_PENDING_LOG
                self.log_lost += lost
                del self.pending_log[:lost]
            return
        self.pending_log = []

    # -- health and status ---------------------------------------------------------------
    def health(self) -> tuple[bool, bool, list[str]]:
        alive = time.monotonic() - self.last_tick < 5.0
        reasons: list[str] = list(self.supervisor.get("not_ready", []))
        if not self.router.get("workers"):
            reasons.append("no worker connected")
        now = time.monotonic()
        for cam in self.cfg.cameras:
            seen = self.camera_seen.get(cam.id)
            if seen is None or now - seen > cam.silent_after_s:
                reasons.append(f"camera {cam.id} silent")
            elif not self.cameras.get(cam.id, {}).get("connected"):
                reasons.append(f"camera {cam.id} disconnected")
            depth = self.router.get("queues", {}).get(cam.id, 0)
            if depth > cam.buffer:
                reasons.append(f"camera {cam.id} queue {depth} over its bound {cam.buffer}")
        ready = alive and not reasons
        self.metrics.ready.set(1 if ready else 0)
        return alive, ready, reasons

    def status_line(self) -> str:
        t = self.ledger.totals()
        elapsed = time.time() - self.started
        lat = np.percentile(self.e2e, [50, 99]) if self.e2e else (float("nan"), float("nan"))
        # decisions per second since the previous status line
        now, decided = time.monotonic(), t.get("decided", 0)
        last_t, last_n = self._status_mark
        fps = (decided - last_n) / (now - last_t) if now > last_t else 0.0
        self._status_mark = (now, decided)
        backend = ",".join(sorted(self.backends)) or "-"
        return (
            f"[{self.cfg.name} {elapsed:6.1f}s] frames={t.get('captured', 0)} "
            f"PASS={t.get('PASS', 0)} FAIL={t.get('FAIL', 0)} NO_DECISION={t.get('NO_DECISION', 0)} "
            f"dropped={t.get('dropped', 0)} in_flight={t.get('in_flight', 0)} "
            f"fps={fps:.1f} e2e p50={lat[0]:.0f}ms p99={lat[1]:.0f}ms "
            f"workers={self.router.get('workers', 0)} backend={backend}{self.truth_score()}"
        )

    def truth_score(self) -> str:
        """' truth: FAIL 65/67 defective, PASS 140/143 clean' when sources carry ground truth."""
        defective = sum(n for (truth, _), n in self.scored.items() if truth == "defective")
        clean = sum(n for (truth, _), n in self.scored.items() if truth == "clean")
        if not defective + clean:
            return ""
        return (
            f" | vs truth: FAIL {self.scored['defective', 'FAIL']}/{defective} defective, "
            f"PASS {self.scored['clean', 'PASS']}/{clean} clean"
        )

    def update_gauges(self) -> None:
        for cam, led in self.ledger.cameras.items():
            self.metrics.inflight.labels(cam).set(led.in_flight)

    def summary(self) -> dict[str, Any]:
        t = self.ledger.totals()
        return {
            "line": self.cfg.name,
            "elapsed_s": time.time() - self.started,
            "totals": t,
            "cameras": self.ledger.snapshot(),
            "malformed": self.rejected.count + int(self.router.get("malformed", 0)),
            "e2e_ms": {
                "p50": float(np.percentile(self.e2e, 50)) if self.e2e else None,
                "p99": float(np.percentile(self.e2e, 99)) if self.e2e else None,
            },
            "backends": dict(self.backends),
            "vs_truth": {f"{t}:{d}": n for (t, d), n in self.scored.items()},
            "processes": self.supervisor.get("pids", {}),
            "restarts": self.supervisor.get("restarts", {}),
            "ng_saved": getattr(self.ng_store, "saved", 0),
            "ng_skipped": self.ng_writer.skipped if self.ng_writer else 0,
            "log_lost": self.log_lost,
        }

    # -- main loop ----------------------------------------------------------------------
    def run(self, results: zmq.Socket, pub: zmq.Socket) -> None:
        last_status = time.monotonic()
        quiet_since = None
        stop_deadline = None
        while True:
            self.last_tick = time.monotonic()
            got = False
            if results.poll(50):
                for _ in range(1000):
                    try:
                        parts = results.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    got = True
                    self.on_message(parts, pub)
            self.flush_log()
            now = time.monotonic()
            if now - last_status >= self.cfg.status_interval_s:
                self.update_gauges()
                print(self.status_line(), flush=True)
                pub.send_multipart([b"status", protocol.encode_header(self.summary())])
                last_status = now
            if self.stop.is_set():
                # Drain: keep reading until the pipe has been quiet for a moment.
                stop_deadline = stop_deadline or now + self.cfg.shutdown_timeout_s * 0.3
                quiet_since = None if got else (quiet_since or now)
                if (quiet_since and now - quiet_since > 0.3) or now > stop_deadline:
                    break
        self.flush_log(force=True)
        self.update_gauges()
        print(self.status_line(), flush=True)
        pub.send_multipart([b"status", protocol.encode_header({**self.summary(), "final": True})])

    def close(self) -> None:
        if self.ng_writer is not None:
            self.ng_writer.close()
        if self.decision_log is not None:
            self.decision_log.close()


def collector_main(
    cfg_dict: dict, log_level: int, started: float, summary_path: str | None = None, ready: Any = None
) -> None:
    """Entry point of the spawned collector process."""
    from edge.config import from_dict
    from edge.process import setup_process

    cfg = from_dict(cfg_dict)
    setup_process("collector", log_level)
    collector = Collector(cfg, started)
    signal.signal(signal.SIGTERM, lambda *_: collector.stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    results = sockets.make_socket(ctx, zmq.PULL, rcvhwm=100000)
    # A subscriber that stops reading loses its own messages at this HWM; PUB never blocks the line.
    pub = sockets.make_socket(ctx, zmq.PUB, sndhwm=1000, linger_ms=0)
    server = None
    try:
        sockets.bind(results, cfg.endpoint("results"))
        sockets.bind(pub, cfg.endpoint("publish"))
        collector.open_sinks()
        if cfg.metrics.port:
            server = serve_http(cfg.metrics.host, cfg.metrics.port, collector.metrics, collector.health)
        if ready is not None:
            ready.set()
        collector.run(results, pub)
    finally:
        collector.close()
        if server is not None:
            server.shutdown()
        if summary_path:
            Path(summary_path).write_text(json.dumps(collector.summary(), indent=2))
        sockets.close_all(ctx, results, pub)
