"""What the operators' page shows, kept up to date beside the line without touching it.

``LineState`` subscribes to the line's publish socket in a thread of its own (the latest
result and mask per camera, the latest ``status`` message, recent latencies and decision
times), polls the line's ``/readyz`` in another, and reads the decision log and the NG
store read-only on request. Nothing here writes to the line's files or sockets: the SUB
socket drops messages for this process alone when it falls behind (PUB semantics,
docs/protocol.md), and SQLite is opened with ``mode=ro``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from edge import protocol
from edge.config import LineConfig

log = logging.getLogger(__name__)

DECISIONS = ("PASS", "FAIL", "NO_DECISION")
#: decisions kept in memory for fps and latency figures (the line's own status keeps 2000)
RECENT = 2000
#: a window of this many seconds gives the fps figure
FPS_WINDOW_S = 10.0
#: seconds between /readyz polls
READYZ_EVERY_S = 2.0
#: an NG store path part: a camera id, a day folder or an entry stem (edge/sinks/ng_store.py)
SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: the fields of a camera's latest result that the page gets (under its camera: no ``cam``;
#: no latencies, no truth)
LATEST_FIELDS = tuple(f for f in protocol.RESULT_FIELDS if f not in ("cam", "latency_ms", "truth"))


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class LineState:
    """See the module docstring. ``start()`` begins listening, ``close()`` stops."""

    def __init__(self, cfg: LineConfig) -> None:
        self.cfg = cfg
        self.started = time.time()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        #: camera id -> the latest result header (as published) and its mask
        self.latest: dict[str, dict[str, Any]] = {}
        self.masks: dict[str, np.ndarray | None] = {}
        #: camera -> its latest preview (docs/protocol.md: a trailing JPEG part, at most a few a
        #: second): (result header, mask of that same frame, JPEG bytes). Kept with its own mask
        #: so the page never draws one frame's defects over another frame
        self.previews: dict[str, tuple[dict[str, Any], np.ndarray | None, bytes]] = {}
        #: the latest ``status`` message and when it came (monotonic)
        self.status: dict[str, Any] | None = None
        self.status_at = 0.0
        #: results received by this process: counts, and (received, e2e ms) of recent ones
        self.received: collections.Counter = collections.Counter()
        #: (camera, decision) -> results since the latest status: the line publishes a status
        #: after the results it counts, so its totals plus these are the counts of now
        self.since_status: collections.Counter = collections.Counter()
        self.recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=RECENT)
        #: (minute, decision) -> decisions: the last hour by capture minute, from the decision
        #: log once at start (what came before this process) and from each result since; a
        #: query of the log at every refresh would scan an hour of rows (360 000 at 100 fps)
        self.minutes: collections.Counter = collections.Counter()
        #: the latest snapshot, shared by every browser connected: (version, monotonic, snapshot)
        self._snap: tuple[int, float, dict[str, Any]] | None = None
        self.readyz: dict[str, Any] = {"ready": None, "reasons": [], "error": "not polled yet"}
        #: bumped on every message: the event stream sends a snapshot when it changed
        self.version = 0
        log_path = cfg.sinks.decision_log
        self.log_path = cfg.resolve(log_path) if log_path else None
        ng = cfg.sinks.ng_store
        self.ng_root = cfg.resolve(ng) if ng else None
        self._threads: list[threading.Thread] = []

    # -- life --------------------------------------------------------------------------------
    def start(self) -> LineState:
        self.backfill_hour()
        for target, name in ((self._subscribe, "ui-sub"), (self._poll_readyz, "ui-readyz")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(5)

    # -- the publish socket --------------------------------------------------------------------
    def _subscribe(self) -> None:
        import zmq

        from edge import sockets
        from edge.keys import client_keys

        endpoint = self.cfg.endpoints.publish
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 10000)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            # a line with CURVE keys accepts its own client pair on the publish socket
            sockets.connect(sock, endpoint, client_keys(self.cfg, [endpoint]))
            log.info("ui: subscribed to %s", endpoint)
            while not self.stop.is_set():
                if sock.poll(200):
                    self.on_message(sock.recv_multipart())
        except Exception:
            log.exception("ui: the subscriber thread failed; the page no longer updates")
        finally:
            sock.close(0)
            ctx.term()

    def on_message(self, parts: list[bytes]) -> None:
        """One published message (docs/protocol.md); anything else is ignored."""
        try:
            topic = parts[0]
            header = json.loads(parts[1])
        except (IndexError, ValueError):
            return
        now = time.time()
        with self.lock:
            self.version += 1
            if topic == b"status":
                self.status, self.status_at = header, time.monotonic()
                self.since_status.clear()
                return
            if not topic.startswith(b"result.") or not isinstance(header, dict):
                return
            cam = str(header.get("cam", topic[7:].decode(errors="replace")))
            mask = None
            shape = header.get("mask_shape")
            if shape and len(parts) > 2 and len(parts[2]) == int(np.prod(shape)):
                mask = np.frombuffer(parts[2], np.uint8).reshape(shape)
            self.latest[cam] = header
            self.masks[cam] = mask
            # the preview is the part after the mask (protocol.md); a subscriber may ignore it
            if header.get("preview") == "jpeg" and len(parts) > 3 and parts[3]:
                self.previews[cam] = (header, mask, parts[3])
            decision = header.get("decision", "?")
            self.received[decision] += 1
            self.since_status[cam, decision] += 1
            e2e = float((header.get("latency_ms") or {}).get("end_to_end", 0.0))
            self.recent.append((now, e2e))
            minute = int(float(header.get("ts") or now) // 60)
            self.minutes[minute, decision] += 1
            if len(self.minutes) > 3 * 90:  # keep 90 minutes at most
                for key in [k for k in self.minutes if k[0] < minute - 90]:
                    del self.minutes[key]

    # -- /readyz ---------------------------------------------------------------------------
    def readyz_url(self) -> str | None:
        m = self.cfg.metrics
        if not m.port:
            return None
        host = "127.0.0.1" if m.host in ("0.0.0.0", "::", "") else m.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{m.port}/readyz"

    def _poll_readyz(self) -> None:
        url = self.readyz_url()
        if url is None:
            self.readyz = {"ready": None, "reasons": [], "error": "metrics.port is 0: no /readyz"}
            return
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=1.5) as r:
                    answer = json.load(r)
            except urllib.error.HTTPError as err:  # 503 carries the reasons
                try:
                    answer = json.load(err)
                except ValueError:
                    answer = {"ready": False, "reasons": [f"/readyz answered {err.code}"]}
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                answer = {"ready": False, "reasons": [], "error": f"{url} unreachable ({reason})"}
            answer.setdefault("error", None)
            with self.lock:
                if answer != self.readyz:
                    self.version += 1
                self.readyz = answer
            self.stop.wait(READYZ_EVERY_S)

    # -- what the page shows -------------------------------------------------------------------
    def snapshot(self, max_age_s: float = 0.25) -> dict[str, Any]:
        """Everything the live part of the page shows, as JSON-ready values; computed at most
        every ``max_age_s`` (or when something changed) however many browsers ask."""
        cached = self._snap
        if cached is not None and (cached[0] == self.version or time.monotonic() - cached[1] < max_age_s):
            return cached[2]
        version = self.version
        snap = self._snapshot()
        self._snap = (version, time.monotonic(), snap)
        return snap

    def _snapshot(self) -> dict[str, Any]:
        now = time.time()
        with self.lock:
            status = dict(self.status) if self.status else None
            status_age = time.monotonic() - self.status_at if status else None
            cams = {cam: dict(h) for cam, h in self.latest.items()}
            preview_seqs = {cam: p[0].get("seq") for cam, p in self.previews.items()}
            e2e = [ms for _, ms in self.recent]
            recent_n = sum(1 for t, _ in self.recent if t >= now - FPS_WINDOW_S)
            received = dict(self.received)
            fresh = dict(self.since_status)
            readyz = dict(self.readyz)
            version = self.version
        since = min(FPS_WINDOW_S, max(now - self.started, 1e-3))
        cameras = {}
        names = [c.id for c in self.cfg.cameras]
        for cam in names + sorted(set(cams) - set(names)):
            h = cams.get(cam)
            per_cam = (status or {}).get("cameras", {}).get(cam, {})
            cameras[cam] = {
                "latest": None
                if h is None
                else {k: h.get(k) for k in LATEST_FIELDS}
                | {"has_mask": h.get("mask_shape") is not None, "preview_seq": preview_seqs.get(cam)},
                "counts": {d: per_cam.get(d, 0) + fresh.get((cam, d), 0) for d in DECISIONS},
            }
        totals = (status or {}).get("totals") or {}
        since_start = {
            d: int(totals.get(d, 0)) + sum(n for (_, dd), n in fresh.items() if dd == d) for d in DECISIONS
        }
        last_hour = self.last_hour_counts(now)
        return {
            "line": (status or {}).get("line", self.cfg.name),
            "version": version,
            "now": now,
            "line_running": status is not None
            and status_age is not None
            and status_age < 3 * max(self.cfg.status_interval_s, 1.0)
            and not status.get("final"),
            "elapsed_s": (status or {}).get("elapsed_s"),
            "status_age_s": status_age,
            "cameras": cameras,
            "since_start": {**since_start, "yield": yield_of(since_start)},
            "last_hour": {**last_hour, "yield": yield_of(last_hour)},
            "received": received,
            "e2e_ms": {"p50": percentile(e2e, 50), "p99": percentile(e2e, 99), "n": len(e2e)},
            "line_e2e_ms": (status or {}).get("e2e_ms"),
            "fps": recent_n / since,
            "health": {
                "readyz": readyz,
                "processes": (status or {}).get("processes", {}),
                "restarts": (status or {}).get("restarts", {}),
                "lost": (status or {}).get("lost", {}),
                "ng_saved": (status or {}).get("ng_saved"),
                "ng_skipped": (status or {}).get("ng_skipped"),
                "log_lost": (status or {}).get("log_lost"),
            },
        }

    def latest_mask(self, cam: str) -> tuple[dict[str, Any], np.ndarray | None] | None:
        with self.lock:
            if cam not in self.latest:
                return None
            return dict(self.latest[cam]), self.masks.get(cam)

    def latest_preview(self, cam: str) -> tuple[dict[str, Any], np.ndarray | None, bytes] | None:
        """The latest preview of ``cam``: its result header, that frame's mask, the JPEG."""
        with self.lock:
            return self.previews.get(cam)

    # -- the decision log (read-only) -------------------------------------------------------------
    def _db(self) -> sqlite3.Connection | None:
        if self.log_path is None or not self.log_path.exists():
            return None
        # mode=ro: this process can never write, lock for writing or create the file
        uri = self.log_path.resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=2.0)
        conn.row_factory = sqlite3.Row
        return conn

    def backfill_hour(self) -> None:
        """The decisions of the hour before this process started, by minute, from the log."""
        try:
            db = self._db()
        except sqlite3.Error as exc:
            log.warning("ui: cannot read the decision log %s: %s", self.log_path, exc)
            return
        if db is None:
            return
        try:
            rows = db.execute(
                "SELECT CAST(capture_ts / 60 AS INTEGER), decision, COUNT(*) FROM decisions "
                "WHERE capture_ts >= ? GROUP BY 1, 2",
                (self.started - 3600,),
            ).fetchall()
        except sqlite3.Error as exc:
            log.warning("ui: cannot read the decision log %s: %s", self.log_path, exc)
            return
        finally:
            db.close()
        with self.lock:
            for minute, decision, n in rows:
                self.minutes[int(minute), decision] += int(n)

    def last_hour_counts(self, now: float) -> dict[str, int]:
        """Decisions captured in the last hour (to the minute) by outcome."""
        first = int(now // 60) - 59
        with self.lock:
            items = list(self.minutes.items())
        counts = collections.Counter()
        for (minute, decision), n in items:
            if minute >= first:
                counts[decision] += n
        return {d: counts.get(d, 0) for d in DECISIONS}

    def history(
        self,
        camera: str = "",
        decision: str = "",
        since: float | None = None,
        until: float | None = None,
        page: int = 1,
        per_page: int = 50,
        as_of: int = 0,
    ) -> dict[str, Any]:
        """One page of the decision log, newest first, filtered by camera, outcome and
        capture-time range (Unix seconds).

        The line keeps logging while someone pages, so a plain offset would shift: page 2
        would repeat page 1's last rows. Each answer names ``as_of``, the newest row it
        counted; a later page that passes it back sees the log as page 1 saw it."""
        where, params = [], []
        if camera:
            where.append("camera_id = ?")
            params.append(camera)
        if decision:
            where.append("decision = ?")
            params.append(decision)
        if since is not None:
            where.append("capture_ts >= ?")
            params.append(since)
        if until is not None:
            where.append("capture_ts <= ?")
            params.append(until)
        out: dict[str, Any] = {"page": page, "per_page": per_page, "as_of": as_of, "total": 0, "rows": []}
        if self.log_path is None:
            return {**out, "note": "this line keeps no decision log (sinks.decision_log is empty)"}
        db = self._db()
        if db is None:
            return {**out, "note": f"no decision log at {self.log_path} yet"}
        try:
            if not as_of:
                as_of = out["as_of"] = db.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()[0]
            where.append("id <= ?")
            params.append(as_of)
            clause = f"WHERE {' AND '.join(where)}"
            out["total"] = db.execute(f"SELECT COUNT(*) FROM decisions {clause}", params).fetchone()[0]
            rows = db.execute(
                f"SELECT camera_id, epoch, seq, capture_ts, decided_ts, decision, reason, defect_area, "
                f"defect_count, boxes, model_id, worker_id, backend, latencies FROM decisions {clause} "
                f"ORDER BY capture_ts DESC, id DESC LIMIT ? OFFSET ?",
                [*params, per_page, (page - 1) * per_page],
            ).fetchall()
        finally:
            db.close()
        for row in rows:
            item = dict(row)
            for key in ("boxes", "latencies"):
                with contextlib.suppress(TypeError, ValueError):
                    item[key] = json.loads(item[key])
            item["ng"] = self.ng_entry_id(item) if item["decision"] == "FAIL" else None
            out["rows"].append(item)
        return out

    # -- the NG store (read-only) ----------------------------------------------------------------
    def ng_entry_id(self, item: dict[str, Any]) -> str | None:
        """``cam/day/stem`` of a decision's NG entry when the store holds it."""
        if self.ng_root is None or not item.get("capture_ts"):
            return None
        day = time.strftime("%Y%m%d", time.gmtime(float(item["capture_ts"])))
        seq, epoch = int(item["seq"]), int(item.get("epoch") or 0)
        stem = f"{epoch}-{seq:010d}" if epoch else f"{seq:010d}"
        entry = f"{item['camera_id']}/{day}/{stem}"
        return entry if (self.ng_root / f"{entry}.json").exists() else None

    def ng_page(self, camera: str = "", page: int = 1, per_page: int = 12, as_of: int = 0) -> dict[str, Any]:
        """NG entries, newest first (complete ones only: their JSON is written last).

        As with the history, ``as_of`` (the newest entry's write time, in ns, that page 1
        counted) keeps later pages where they were while the line stores new entries."""
        out: dict[str, Any] = {"page": page, "per_page": per_page, "as_of": as_of, "total": 0, "entries": []}
        if self.ng_root is None:
            return {**out, "note": "this line keeps no NG store (sinks.ng_store is empty)"}
        if not self.ng_root.is_dir():
            return {**out, "note": f"no NG store at {self.ng_root} yet"}
        pattern = f"{camera}/*/*.json" if camera and SAFE_PART.match(camera) else "*/*/*.json"
        found = []
        for path in self.ng_root.glob(pattern):
            with contextlib.suppress(OSError):
                found.append((path.stat().st_mtime_ns, path))
        found.sort(reverse=True)
        if not as_of:
            out["as_of"] = found[0][0] if found else 0
        else:
            found = [entry for entry in found if entry[0] <= as_of]
        out["total"] = len(found)
        for _, path in found[(page - 1) * per_page : page * per_page]:
            try:
                meta = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # rotated out between the listing and now
            rel = path.relative_to(self.ng_root).with_suffix("")
            out["entries"].append({"id": rel.as_posix(), "meta": meta})
        return out

    def ng_file(self, cam: str, day: str, name: str) -> Path | None:
        """A file of the NG store, after checking each part of its name (no escape from the root)."""
        if self.ng_root is None or not all(SAFE_PART.match(p) for p in (cam, day, name)):
            return None
        if not name.endswith((".png", ".json")):
            return None
        path = self.ng_root / cam / day / name
        return path if path.is_file() else None


def yield_of(counts: dict[str, int]) -> float | None:
    """Good parts among decided ones: a NO_DECISION is never a good part."""
    n = sum(counts.get(d, 0) for d in DECISIONS)
    return counts.get("PASS", 0) / n if n else None
