"""Prometheus metrics and the health endpoints, served by the collector.

Every result, drop and camera counter of every worker (local or remote) passes
through the collector, so one registry holds the whole line: per-stage latency
histograms, drops by reason, decisions by outcome, queue depths, camera state.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from edge.sockets import EndpointError

# A `_created` gauge beside every counter and histogram doubles the page for nothing a
# line's dashboards use (Prometheus detects counter resets by itself).
disable_created_metrics()

STAGES = ("capture_to_send", "queue", "worker_wait", "preprocess", "infer", "postprocess", "end_to_end")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LineMetrics:
    """The line's metrics, in a registry of their own (no process-global state)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.latency = Histogram(
            "lineside_stage_latency_seconds",
            "Latency per pipeline stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "lineside_decisions", "Decisions by camera and outcome", ["camera", "outcome"], registry=r
        )
        self.drops = Counter(
            "lineside_drops", "Frames dropped, by camera and reason", ["camera", "reason"], registry=r
        )
        # Counters (exposed with a _total suffix): rate() and increase() work across restarts.
        self.captured = Counter(
            "lineside_frames_captured", "Frames captured per camera", ["camera"], registry=r
        )
        self.late = Counter(
            "lineside_late_decisions",
            "Decisions that came after their frame was counted lost (the drop was undone)",
            ["camera"],
            registry=r,
        )
        self.inflight = Gauge(
            "lineside_frames_in_flight", "captured - decided - dropped, per camera", ["camera"], registry=r
        )
        self.queue_depth = Gauge(
            "lineside_queue_depth", "Frames waiting in the router", ["camera"], registry=r
        )
        self.camera_pending = Gauge(
            "lineside_camera_buffered", "Frames waiting in the camera's own buffer", ["camera"], registry=r
        )
        self.camera_fps = Gauge("lineside_camera_fps", "Frames captured per second", ["camera"], registry=r)
        self.connected = Gauge(
            "lineside_camera_connected", "1 when the camera delivers", ["camera"], registry=r
        )
        self.disconnects = Counter(
            "lineside_camera_disconnects", "Camera disconnects", ["camera"], registry=r
        )
        self.reconnects = Counter("lineside_camera_reconnects", "Camera reconnects", ["camera"], registry=r)
        self.gap_seconds = Counter(
            "lineside_camera_gap_seconds", "Seconds the camera was not connected", ["camera"], registry=r
        )
        self.last_connected = Gauge(
            "lineside_camera_last_connected_timestamp_seconds",
            "When the camera last connected",
            ["camera"],
            registry=r,
        )
        self.rejected = Counter(
            "lineside_rejected_messages",
            "Messages refused, by socket and why (malformed, unauthenticated, unknown, version, internal)",
            ["socket", "why"],
            registry=r,
        )
        self.workers = Gauge("lineside_workers", "Workers connected to the router", registry=r)
        self.worker_decisions = Counter(
            "lineside_worker_decisions", "Decisions made, per worker", ["worker"], registry=r
        )
        self.worker_held = Gauge(
            "lineside_worker_frames_held",
            "Frames a worker holds now (sent, not yet finished)",
            ["worker"],
            registry=r,
        )
        self.ready = Gauge("lineside_ready", "1 when the line is ready", registry=r)
        # The plant's sinks (MQTT, OPC UA) run in processes of their own and report here
        # (sink_stats), so one scrape covers them too.
        self.sink_sent = Counter(
            "lineside_sink_sent", "Messages a plant sink delivered (MQTT: acknowledged)", ["sink"], registry=r
        )
        self.sink_dropped = Counter(
            "lineside_sink_dropped",
            "Messages a plant sink could not deliver, by why (queue_full, connection_lost, error, shutdown)",
            ["sink", "reason"],
            registry=r,
        )
        self.sink_reconnects = Counter(
            "lineside_sink_reconnects",
            "Times a plant sink came back after losing its broker (MQTT) or its endpoint (OPC UA)",
            ["sink"],
            registry=r,
        )
        self.sink_up = Gauge(
            "lineside_sink_up",
            "1 while a plant sink is connected (MQTT) or listening (OPC UA)",
            ["sink"],
            registry=r,
        )
        self.sink_queued = Gauge(
            "lineside_sink_queued", "Messages waiting in a plant sink's queue", ["sink"], registry=r
        )
        #: (sink, epoch) -> the totals of that sink process already added to the counters
        self._sink_counted: dict[tuple[str, int], dict[str, float]] = {}

    def sink_stats(self, h: dict) -> None:
        """Take a sink's report (``sink_stats``): its counts are totals of its process, the
        metrics are counters of the line, so they grow by what each process adds."""
        sink = h["sink"]
        counted = self._sink_counted.setdefault((sink, h["epoch"]), {})
        grown = [("sent", self.sink_sent, (sink,), h["sent"])]
        grown.append(("reconnects", self.sink_reconnects, (sink,), h["reconnects"]))
        grown += [(f"dropped:{r}", self.sink_dropped, (sink, r), n) for r, n in h["dropped"].items()]
        for name, counter, labels, value in grown:
            delta = value - counted.get(name, 0)
            if delta > 0:
                counter.labels(*labels).inc(delta)
                counted[name] = value
        self.sink_up.labels(sink).set(1 if h["up"] else 0)
        self.sink_queued.labels(sink).set(h["queued"])

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Handler(BaseHTTPRequestHandler):
    render: Callable[[], bytes]
    health: Callable[[], tuple[bool, bool, list[str]]]
    notes: Callable[[], list[str]]

    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            self._send(200, self.render(), CONTENT_TYPE_LATEST)
            return
        alive, ready, reasons = self.health()
        if self.path.startswith("/healthz"):
            self._send(200 if alive else 503, json.dumps({"alive": alive}).encode(), "application/json")
        elif self.path.startswith("/readyz"):
            body = json.dumps({"ready": ready, "reasons": reasons, "notes": self.notes()}).encode()
            self._send(200 if ready else 503, body, "application/json")
        else:
            self._send(404, b"try /metrics, /healthz or /readyz\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # scrapes are not news
        pass


def serve_http(
    host: str,
    port: int,
    render: Callable[[], bytes],
    health: Callable[[], tuple[bool, bool, list[str]]],
    notes: Callable[[], list[str]] = list,
) -> ThreadingHTTPServer:
    """Start /metrics (``render()``), /healthz and /readyz (``health()``, and ``notes()``: what
    the line should know without being unready) in a daemon thread; a busy port is one clear error."""
    handler = type(
        "Handler",
        (_Handler,),
        {"render": staticmethod(render), "health": staticmethod(health), "notes": staticmethod(notes)},
    )
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        msg = (
            f"cannot serve metrics on {host}:{port}: {exc.strerror}; set metrics.port to a free one (0 = off)"
        )
        raise EndpointError(msg) from None
    server.daemon_threads = True
    # shutdown() waits for the loop's next poll: at the default 0.5 s that was most of the time
    # the collector's shutdown stage has to close its books on a loaded machine
    serve = functools.partial(server.serve_forever, poll_interval=0.05)
    threading.Thread(target=serve, name="metrics-http", daemon=True).start()
    return server
