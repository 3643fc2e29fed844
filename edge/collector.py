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
import contextlib
import json
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from edge import protocol, sockets
from edge.accounting import DUPLICATE, LATE, REVOCABLE_DROPS, Ledger
from edge.config import LineConfig
from edge.metrics import LineMetrics, serve_http
from edge.process import StopEvent
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


#: seconds after a restart before the frames it lost are counted: long enough for the
#: survivors (workers, cameras, the new router) to have told what they still hold
SWEEP_GRACE_S = 3.0
#: a sweep that waits this long past its grace for fresh evidence goes ahead with what it has
SWEEP_PATIENCE_S = 10.0
#: drop reasons a lossless camera's config asks for; any other drop of such a camera is a loss
REQUESTED_LOSSLESS_DROPS = frozenset({"too_old"})
#: shared progress slots the supervisor reads (see Collector.publish_progress)
PROGRESS_SLOTS = ("in_flight", "settled", "lost", "ended_cameras", "final_cameras", "busy_workers")


@dataclass
class Sweep:
    """Frames that died with a process, to be counted as ``reason`` once the evidence is in.

    A frame is counted when, after the grace period, it is still neither decided nor
    dropped, the router (a fresh report) does not hold it, and its camera has sent it (or
    its camera process is gone). A decision that turns up later replaces the drop.
    """

    reason: str
    due: float
    #: (camera, epoch) pairs to look at; None: every epoch of every camera
    scope: set[tuple[str, int]] | None = None


class Collector:
    """See the module docstring."""

    def __init__(self, cfg: LineConfig, started: float | None = None, shared: Any = None) -> None:
        self.cfg = cfg
        self.ledger = Ledger()
        self.metrics = LineMetrics()
        self.stop = StopEvent()  # a signal handler sets it
        #: held while messages are processed, and by /metrics and /readyz, so one scrape
        #: sees one consistent ledger
        self.lock = threading.Lock()
        self.started = started or time.time()
        self.e2e: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._empty_masks: dict[tuple[int, ...], bytes] = {}
        self.pending_log: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.router: dict[str, Any] = {}
        self.router_seen = 0.0
        self.cameras: dict[str, dict[str, Any]] = {}
        self.camera_seen: dict[str, float] = {}
        #: camera -> the newest epoch (camera process) it has reported
        self.camera_epoch: dict[str, int] = {}
        self.final_epochs: set[tuple[str, int]] = set()
        self._counted: dict[tuple[str, int], dict[str, float]] = {}
        #: camera -> captured frames already added to lineside_frames_captured_total
        self._captured_shown: dict[str, int] = {}
        self.sweeps: list[Sweep] = []
        self.supervisor: dict[str, Any] = {}
        self.backends: collections.Counter = collections.Counter()
        #: (truth, decision) -> count, for frames whose source knew the ground truth
        self.scored: collections.Counter = collections.Counter()
        self.rejected = protocol.Rejections("results", log)
        self.key = cfg.key
        self.last_tick = time.monotonic()
        self._status_mark = (time.monotonic(), 0)
        #: camera -> (when, captured, epoch) of the last fps sample
        self._fps_marks: dict[str, tuple[float, int, int]] = {}
        self.decision_log = None
        self.ng_store = None
        self.ng_writer: NgWriter | None = None
        self.log_errors = 0
        #: decisions that never reached the log (it failed for longer than MAX_PENDING_LOG allows)
        self.log_lost = 0
        self.policies = {cam.id: cam.policy for cam in cfg.cameras}
        #: progress for the supervisor (a shared array of PROGRESS_SLOTS), or None
        self.shared = shared
        self.snapshot_path = Path(cfg.run_dir) / "ledger.json" if cfg.run_dir else None
        self.restore()

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

    # -- a restarted collector carries on with the same books -----------------------------
    def restore(self) -> None:
        """Load the ledger an earlier collector of this run saved; what it had not saved yet is
        counted as ``collector_lost`` after the grace period (or decided, if it still comes)."""
        if self.snapshot_path is None or not self.snapshot_path.is_file():
            return
        try:
            data = json.loads(self.snapshot_path.read_text())
            self.ledger = Ledger.from_json(data["ledger"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cannot read the saved ledger %s (%s); starting an empty one", self.snapshot_path, exc)
            return
        self.router["router_epoch"] = data.get("router_epoch")
        self.camera_epoch = {cam: int(e) for cam, e in data.get("camera_epochs", {}).items()}
        self.final_epochs = {(cam, int(e)) for cam, e in data.get("final_epochs", [])}
        self.sweeps.append(Sweep("collector_lost", time.monotonic() + SWEEP_GRACE_S))
        log.warning("collector restarted: carrying on with the ledger saved by the one before")

    def save(self) -> None:
        """Write the ledger where a restarted collector finds it (atomically)."""
        if self.snapshot_path is None:
            return
        data = {
            "ledger": self.ledger.to_json(),
            "router_epoch": self.router.get("router_epoch"),
            "camera_epochs": self.camera_epoch,
            "final_epochs": sorted(self.final_epochs),
        }
        tmp = self.snapshot_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.snapshot_path)
        except OSError as exc:
            log.debug("cannot save the ledger: %s", exc)

    # -- messages ------------------------------------------------------------------
    def on_message(self, parts: list[Any], pub: zmq.Socket) -> None:
        """One message on the results socket: checked against the schema, then against what
        proves it comes from this line (a frame's tag, or the seal of the line's own
        processes), then handled. Whatever fails is refused and counted, never half-applied."""
        h = protocol.admit(
            parts[0].bytes,
            protocol.TO_COLLECTOR,
            self.on_rejected,
            key=self.key,
            mac=parts[1].buffer if len(parts) == 2 else None,
            cameras=self.policies,
        )
        if h is None:
            return
        kind = h["t"]
        if kind == "result":
            self.on_result(h, parts, pub)
        elif kind == "drop":
            self.on_drop(h)
        elif kind == "stats":
            self.on_camera_stats(h)
        elif kind == "router_stats":
            self.on_router_stats(h)
        elif kind == "sink_stats":
            self.metrics.sink_stats(h)
        else:
            self.supervisor = h

    def on_rejected(self, why: str, kind: str = "malformed") -> None:
        self.rejected(why, kind)
        self.metrics.rejected.labels("results", kind).inc()

    def on_drop(self, h: dict[str, Any]) -> None:
        cam, epoch, reason = h["cam"], h["epoch"], h["reason"]
        if len(h["seqs"]) != len(h["tags"]):
            self.on_rejected(f"drop of {len(h['seqs'])} seq(s) with {len(h['tags'])} tag(s)")
            return
        pairs = zip(h["seqs"], h["tags"], strict=True)
        seqs = [s for s, tag in pairs if protocol.tag_ok(self.key, cam, epoch, s, tag)]
        if len(seqs) < len(h["seqs"]):
            self.on_rejected(f"drop of {cam} frame(s) without this line's tag", "unauthenticated")
        counted = sum(self.drop(cam, epoch, seq, reason) for seq in seqs)
        if reason in REVOCABLE_DROPS and seqs:
            already = len(seqs) - counted
            log.warning(
                "%s: %d frame(s) counted %s%s",
                cam,
                counted,
                reason,
                f" ({already} reported were decided already)" if already else "",
            )

    def drop(self, cam: str, epoch: int, seq: int, reason: str) -> bool:
        if self.ledger.dropped(cam, epoch, seq, reason):
            self.metrics.drops.labels(cam, reason).inc()
            return True
        return False

    def on_router_stats(self, h: dict[str, Any]) -> None:
        previous = self.router.get("router_epoch")
        if previous is not None and h.get("router_epoch") not in (None, previous):
            log.warning("router restarted: frames it held will be counted router_lost")
            self.sweeps.append(Sweep("router_lost", time.monotonic() + SWEEP_GRACE_S))
        before = self.router.get("rejected", {}) if previous == h["router_epoch"] else {}
        for sock, counts in h["rejected"].items():
            for why, n in counts.items():
                grown = n - before.get(sock, {}).get(why, 0)
                if grown > 0 and why in protocol.REJECT_REASONS:
                    self.metrics.rejected.labels(sock, why).inc(grown)
        self.router = h
        self.router_seen = time.monotonic()
        for cam, depth in h.get("queues", {}).items():
            self.metrics.queue_depth.labels(cam).set(depth)
        self.metrics.workers.set(h.get("workers", 0))
        self.metrics.worker_held.clear()
        for name, state in h.get("worker_states", {}).items():
            self.metrics.worker_held.labels(name).set(state.get("inflight", 0))

    def on_camera_stats(self, h: dict[str, Any]) -> None:
        cam, epoch, captured = h["cam"], h["epoch"], h["captured"]
        current = self.camera_epoch.get(cam)
        if current is not None and epoch > current and (cam, current) not in self.final_epochs:
            log.warning(
                "%s: camera process restarted: frames the old one held will be counted camera_lost", cam
            )
            self.sweeps.append(Sweep("camera_lost", time.monotonic() + SWEEP_GRACE_S, {(cam, current)}))
        if current is None or epoch >= current:
            self.camera_epoch[cam] = epoch
        if h.get("final"):
            self.final_epochs.add((cam, epoch))
        self.ledger.captured(cam, epoch, captured)
        for reason, seqs in h["drops"].items():
            for seq in seqs:
                self.drop(cam, epoch, seq, reason)
        prev = self.cameras.get(cam, {})
        if captured != prev.get("captured") or epoch != prev.get("epoch"):
            self.camera_seen[cam] = time.monotonic()
        self.cameras[cam] = h
        m = self.metrics
        # The camera's counters are totals of its process (epoch); the metrics are counters
        # of the line, so they grow by what each epoch adds.
        counted = self._counted.setdefault((cam, epoch), {})
        for name, counter, value in (
            ("disconnects", m.disconnects, h.get("disconnects", 0)),
            ("reconnects", m.reconnects, h.get("reconnects", 0)),
            ("gap_s", m.gap_seconds, h.get("gap_s", 0.0)),
        ):
            delta = float(value) - counted.get(name, 0.0)
            if delta > 0:
                counter.labels(cam).inc(delta)
                counted[name] = float(value)
        m.connected.labels(cam).set(1 if h.get("connected") else 0)
        m.last_connected.labels(cam).set(h.get("last_connected_ts", 0.0))
        m.camera_pending.labels(cam).set(h.get("pending", 0))
        now = time.monotonic()
        mark = self._fps_marks.get(cam)
        if mark is None or mark[2] != epoch or now - mark[0] >= 2.0:
            if mark is not None and mark[2] == epoch:
                m.camera_fps.labels(cam).set((captured - mark[1]) / (now - mark[0]))
            self._fps_marks[cam] = (now, captured, epoch)

    def empty_mask(self, shape: list[int]) -> bytes:
        """The published bytes of an all-background mask of ``shape``, made once per shape:
        subscribers still get the raw mask the protocol promises, the line no copy per frame."""
        key = tuple(shape)
        if key not in self._empty_masks:
            self._empty_masks = {key: bytes(int(np.prod(key)))}  # one shape per line: keep one
        return self._empty_masks[key]

    def on_result(self, h: dict[str, Any], parts: list[Any], pub: zmq.Socket) -> None:
        cam, epoch, seq, outcome = h["cam"], h["epoch"], h["seq"], h["decision"]
        if not protocol.tag_ok(self.key, cam, epoch, seq, h["tag"]):
            self.on_rejected(f"result for {cam}#{seq} without this line's tag", "unauthenticated")
            return
        # [header] or [header, mask] or [header, mask, image]: each buffer as its shape says;
        # an empty mask (``mask_empty``) is not sent, and an image comes only with a sent mask;
        # then [preview] last when the header says ``preview`` (a JPEG: capped, not decoded here)
        sent_mask = None if h["mask_empty"] else h["mask_shape"]
        shapes = [s for s in (sent_mask, h["image_shape"]) if s is not None]
        preview = parts[-1] if h["preview"] is not None and len(parts) > 1 else None
        if (
            (h["image_shape"] is not None and sent_mask is None)
            or (h["mask_empty"] and h["mask_shape"] is None)
            or len(parts) != 1 + len(shapes) + (h["preview"] is not None)
            or any(len(p) != int(np.prod(s)) for p, s in zip(parts[1:], shapes, strict=False))
        ):
            self.on_rejected(f"result {cam}#{seq}: {len(parts)} part(s) that do not match its shapes")
            return
        if (h["preview"] is None) != (h["preview_shape"] is None) or (
            preview is not None
            and (
                len(preview) > protocol.MAX_PREVIEW_BYTES or bytes(preview.buffer[:2]) != protocol.JPEG_MAGIC
            )
        ):
            size = f"{len(preview)} bytes" if preview is not None else "no part"
            self.on_rejected(
                f"result {cam}#{seq}: a bad preview ({size}; needs preview and preview_shape, and a JPEG "
                f"of at most {protocol.MAX_PREVIEW_BYTES} bytes)"
            )
            return
        status = self.ledger.decided(cam, epoch, seq, outcome)
        if status == DUPLICATE:
            log.debug("duplicate result %s#%d ignored", cam, seq)
            return
        if status == LATE:
            log.info("%s#%d: decided after it was counted lost; the decision replaces the drop", cam, seq)
            self.metrics.late.labels(cam).inc()
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
        m.worker_decisions.labels(h.get("worker", "?")).inc()
        for stage, ms in lat.items():
            m.latency.labels(stage).observe(ms / 1000)
        if h["mask_empty"]:
            mask_bytes = self.empty_mask(h["mask_shape"])
        else:
            mask_bytes = parts[1].bytes if len(parts) > 1 else b""
        # Publish first: subscribers should not wait for the disk.
        header_out = {k: v for k, v in h.items() if k != "t" and k not in protocol.RESULT_UNPUBLISHED}
        for key in protocol.RESULT_OPTIONAL:  # present only when they say something
            if header_out[key] is None:
                del header_out[key]
        out = [b"result." + cam.encode(), protocol.encode_header(header_out), mask_bytes]
        if preview is not None:  # trailing: the documented parts keep their places
            out.append(preview.bytes)
        # PUB drops for a subscriber at its HWM instead of blocking: a stalled UI never stalls the line.
        pub.send_multipart(out)
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
        if outcome == "FAIL" and self.ng_writer is not None and h["image_shape"] is not None:
            mask = np.frombuffer(parts[1].buffer, np.uint8).reshape(h["mask_shape"])
            image = np.frombuffer(parts[2].buffer, np.uint8).reshape(h["image_shape"])
            meta = {k: h.get(k) for k in ("reason", "boxes", "model_id", "defect_area")}
            self.ng_writer.submit(cam, epoch, seq, image, mask, {**meta, "capture_ts": h["ts"]})

    def flush_log(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_flush < LOG_FLUSH_S:
            return
        self.last_flush = time.monotonic()
        if self.pending_log and self.decision_log is not None:
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
        # The ledger is saved with the log, so the two agree after a crash of this process.
        self.save()

    # -- frames that died with a process ----------------------------------------------------
    def run_sweeps(self) -> None:
        now = time.monotonic()
        for sweep in list(self.sweeps):
            if now < sweep.due:
                continue
            fresh = self.router_seen >= sweep.due
            if not fresh and now < sweep.due + SWEEP_PATIENCE_S:
                continue  # wait for a report from a router that started after the event
            self.sweeps.remove(sweep)
            counted = self.sweep(sweep.reason, sweep.scope)
            if counted:
                log.warning("%d frame(s) counted %s", counted, sweep.reason)

    def sweep(self, reason: str, scope: set[tuple[str, int]] | None, at_exit: bool = False) -> int:
        """Count as ``reason`` every frame in ``scope`` that nobody holds any more (``at_exit``:
        every open frame, held or not: the line has stopped)."""
        held = {} if at_exit else self.router.get("holding", {})
        if scope is None:
            scope = {(cam, e) for cam, led in self.ledger.cameras.items() for e in led.epochs}
        counted = 0
        for cam, epoch in sorted(scope):
            alive = self.camera_epoch.get(cam) == epoch and (cam, epoch) not in self.final_epochs
            # A live camera process still holds its unsent frames (from pending_from on).
            below = self.cameras.get(cam, {}).get("pending_from") if alive and not at_exit else None
            keep = set(held.get(cam, {}).get(str(epoch), []))
            for seq in self.ledger.unaccounted(cam, epoch, below):
                if seq not in keep and self.drop(cam, epoch, seq, reason):
                    counted += 1
        return counted

    # -- health and status ---------------------------------------------------------------
    def health(self) -> tuple[bool, bool, list[str]]:
        with self.lock:
            return self._health()

    def _health(self) -> tuple[bool, bool, list[str]]:
        alive = time.monotonic() - self.last_tick < 5.0
        reasons: list[str] = list(self.supervisor.get("not_ready", []))
        if not self.router.get("workers"):
            reasons.append("no worker connected")
        now = time.monotonic()
        for cam in self.cfg.cameras:
            seen = self.camera_seen.get(cam.id)
            stats = self.cameras.get(cam.id, {})
            if stats.get("down"):
                reasons.append(f"camera {cam.id} down: {stats['down']}")
            elif seen is None or now - seen > cam.silent_after_s:
                reasons.append(f"camera {cam.id} silent")
            elif not stats.get("connected"):
                reasons.append(f"camera {cam.id} disconnected")
            depth = self.router.get("queues", {}).get(cam.id, 0)
            if depth > cam.buffer:
                reasons.append(f"camera {cam.id} queue {depth} over its bound {cam.buffer}")
        ready = alive and not reasons
        self.metrics.ready.set(1 if ready else 0)
        return alive, ready, reasons

    def notes(self) -> list[str]:
        """What /readyz shows beside readiness: workers that run another backend than
        configured, and why (``backend: auto`` fell back from TensorRT). Not a reason to be
        unready: the line decides, on ONNX Runtime."""
        with self.lock:
            return [f"worker {w}: {note}" for w, note in sorted(self.router.get("backend_notes", {}).items())]

    def render_metrics(self) -> bytes:
        """The /metrics page: gauges derived from the ledger are computed now, under the same
        lock as the counters, so ``in_flight`` agrees with the counters of the same scrape."""
        with self.lock:
            self.update_gauges()
            self._health()
            return self.metrics.render()

    def status_line(self) -> str:
        t = self.ledger.totals()
        elapsed = time.time() - self.started
        lat = np.percentile(self.e2e, [50, 99]) if self.e2e else (float("nan"), float("nan"))
        # decisions per second since the previous status line
        now, decided = time.monotonic(), t["decided"]
        last_t, last_n = self._status_mark
        fps = (decided - last_n) / (now - last_t) if now > last_t else 0.0
        self._status_mark = (now, decided)
        backend = ",".join(sorted(self.backends)) or "-"
        return (
            f"[{self.cfg.name} {elapsed:6.1f}s] frames={t['captured']} "
            f"PASS={t['PASS']} FAIL={t['FAIL']} NO_DECISION={t['NO_DECISION']} "
            f"dropped={t['dropped']} in_flight={t['in_flight']} "
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
        """Bring the ledger's figures to the metrics. ``frames_captured_total`` follows the
        ledger's own count (a frame can be decided before its camera's counter arrives), so
        that on every page captured = decisions + (drops - late decisions) + in flight."""
        for cam, led in self.ledger.cameras.items():
            self.metrics.inflight.labels(cam).set(led.in_flight)
            grown = led.captured - self._captured_shown.get(cam, 0)
            if grown > 0:
                self.metrics.captured.labels(cam).inc(grown)
                self._captured_shown[cam] = led.captured

    def lost(self) -> dict[str, int]:
        """Drops of lossless cameras that their config did not ask for, by reason."""
        out: collections.Counter = collections.Counter()
        for cam, led in self.ledger.cameras.items():
            if self.policies.get(cam) == "lossless":
                out.update({r: n for r, n in led.dropped.items() if r not in REQUESTED_LOSSLESS_DROPS})
        return dict(out)

    def publish_progress(self) -> None:
        """Tell the supervisor how the ledger stands (it decides when a replay is done, and the
        exit code): frames in flight, frames settled (decided or dropped), frames lost, how
        many configured cameras have reached the end of their stream and how many have sent
        their last word, and how many workers are computing."""
        if self.shared is None:
            return
        t = self.ledger.totals()
        final = [(c.id, self.camera_epoch.get(c.id)) in self.final_epochs for c in self.cfg.cameras]
        ended = [
            f or self.cameras.get(c.id, {}).get("ended", False)
            for c, f in zip(self.cfg.cameras, final, strict=True)
        ]
        values = (
            t["in_flight"],
            t["decided"] + t["dropped"],
            sum(self.lost().values()),
            sum(ended),
            sum(final),
            self.router.get("busy", 0),
        )
        for i, value in enumerate(values):
            self.shared[i] = value

    def summary(self) -> dict[str, Any]:
        t = self.ledger.totals()
        _alive, ready, reasons = self._health()
        return {
            "line": self.cfg.name,
            "elapsed_s": time.time() - self.started,
            "totals": t,
            "cameras": self.ledger.snapshot(),
            "lost": self.lost(),
            "rejected": {"results": dict(self.rejected.counts), **self.router.get("rejected", {})},
            "e2e_ms": {
                "p50": float(np.percentile(self.e2e, 50)) if self.e2e else None,
                "p99": float(np.percentile(self.e2e, 99)) if self.e2e else None,
            },
            "backends": dict(self.backends),
            "backend_notes": dict(self.router.get("backend_notes", {})),
            "vs_truth": {f"{t}:{d}": n for (t, d), n in self.scored.items()},
            "processes": self.supervisor.get("pids", {}),
            "restarts": self.supervisor.get("restarts", {}),
            "ng_saved": getattr(self.ng_store, "saved", 0),
            "ng_skipped": self.ng_writer.skipped if self.ng_writer else 0,
            "log_lost": self.log_lost,
            # the plant's sinks (OPC UA) have no other way to learn it
            "ready": ready,
            "not_ready": reasons,
        }

    # -- main loop ----------------------------------------------------------------------
    def drain_deadline(self, now: float, kill_at: float) -> float:
        """When the drain that starts at ``now`` ends, at the latest: 60 % of shutdown_timeout_s
        later, and no later than a third of the way to ``kill_at``, when the supervisor kills this
        process (0: not known), so that the rest is left to count what is still open, log it and
        publish the final status: on a loaded 2-core box that took more than half of a second.
        Both bounds matter when the router's last word never comes."""
        end = now + self.cfg.shutdown_timeout_s * 0.6
        if kill_at:
            end = min(end, now + max(0.0, kill_at - now) / 3)
        return end

    def run(self, results: zmq.Socket, pub: zmq.Socket, kill_at: Any = None) -> None:
        """Read results until stopped, then drain (see ``drain_deadline``); ``kill_at`` is the
        supervisor's shared value of when it kills this process, set before its SIGTERM."""
        last_status = time.monotonic()
        quiet_since = None
        stop_deadline = None
        while True:
            self.last_tick = time.monotonic()
            got = False
            if results.poll(50):
                with self.lock:
                    for _ in range(1000):
                        try:
                            parts = results.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        got = True
                        self.rejected.guard(self.on_message, parts, pub)
            with self.lock:
                self.run_sweeps()
                self.flush_log()
                self.publish_progress()
            now = time.monotonic()
            if now - last_status >= self.cfg.status_interval_s:
                with self.lock:
                    self.update_gauges()
                    line, summary = self.status_line(), self.summary()
                print(line, flush=True)
                pub.send_multipart([b"status", protocol.encode_header(summary)])
                last_status = now
            if self.stop.is_set():
                # Drain: keep reading until the books are closed or the pipe has been quiet for
                # a moment after the router's last word, within the bound.
                stop_deadline = stop_deadline or self.drain_deadline(now, kill_at.value if kill_at else 0.0)
                quiet_since = None if got else (quiet_since or now)
                settled = self.ledger.totals()["in_flight"] == 0
                router_done = self.router.get("final") or not self.router
                if (
                    quiet_since and now - quiet_since > 0.3 and (settled or router_done)
                ) or now > stop_deadline:
                    break
        with self.lock:
            # Whatever is still open now was lost in the stop; never leave a frame in flight.
            leftover = self.sweep("shutdown", None, at_exit=True)
            if leftover:
                log.warning("%d frame(s) still unaccounted at the end counted as shutdown", leftover)
            self.flush_log(force=True)
            self.publish_progress()
            self.update_gauges()
            line, summary = self.status_line(), {**self.summary(), "final": True}
        print(line, flush=True)
        pub.send_multipart([b"status", protocol.encode_header(summary)])
        # The books are closed: nothing for a successor to carry on with.
        if self.snapshot_path is not None:
            with contextlib.suppress(OSError):
                self.snapshot_path.unlink()

    def close(self) -> None:
        if self.ng_writer is not None:
            self.ng_writer.close()
        if self.decision_log is not None:
            self.decision_log.close()


def collector_main(
    cfg_dict: dict,
    log_level: int,
    started: float,
    summary_path: str | None = None,
    ready: Any = None,
    shared: Any = None,
    kill_at: Any = None,
) -> None:
    """Entry point of the spawned collector process."""
    from edge.config import from_dict
    from edge.keys import line_keys
    from edge.process import die_with_parent, leave_run_dir, setup_process

    cfg = from_dict(cfg_dict)
    setup_process("collector", log_level)
    collector = Collector(cfg, started, shared)
    die_with_parent(collector.stop.set)
    signal.signal(signal.SIGTERM, lambda *_: collector.stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    results = sockets.make_socket(ctx, zmq.PULL, rcvhwm=100000)
    # A subscriber that stops reading loses its own messages at this HWM; PUB never blocks the line.
    pub = sockets.make_socket(ctx, zmq.PUB, sndhwm=1000, linger_ms=0)
    server = None
    try:
        keys = line_keys(cfg)
        sockets.bind(results, cfg.endpoint("results"), keys)
        sockets.bind(pub, cfg.endpoint("publish"), keys)
        collector.open_sinks()
        if cfg.metrics.port:
            server = serve_http(
                cfg.metrics.host,
                cfg.metrics.port,
                collector.render_metrics,
                collector.health,
                collector.notes,
            )
        if ready is not None:
            ready.set()
        collector.run(results, pub, kill_at)
    finally:
        collector.close()
        if server is not None:
            server.shutdown()
        if summary_path:
            Path(summary_path).write_text(json.dumps(collector.summary(), indent=2))
        sockets.close_all(ctx, results, pub)
        sockets.remove_ipc_file(cfg.endpoint("results"))
        leave_run_dir(cfg.run_dir)
