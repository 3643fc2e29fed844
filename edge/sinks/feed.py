"""What the plant's sinks (MQTT, OPC UA) share: the line's messages in a bounded queue, their
counters, the report of those counters to the line's metrics, and the start-up checks.

Each plant sink is a process of its own, started and restarted by the supervisor, that
subscribes to the line's publish socket like any other subscriber (docs/protocol.md). So a
broker that hangs can never back-pressure the collector: the line's PUB socket never waits
for a subscriber. A thread here only moves messages from the socket into memory, so it keeps
up with the line whatever the sink's peer does; the queue it fills holds ``queue`` messages,
and when it is full the oldest one goes and is counted (``queue_full``).

The counters (sent, dropped by why, reconnects, up, queued) go to the collector once a
second as a sealed ``sink_stats`` message on the line's results endpoint, like a camera's
counters, and the collector exports them with the line's metrics (``lineside_sink_*``,
docs/daemon.md): one scrape covers the line and its sinks, and there is no second server.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from edge import protocol, sockets
from edge.config import LineConfig
from edge.process import StopEvent
from edge.sinks import SinkError

log = logging.getLogger(__name__)

#: seconds between two reports of a sink's counters to the collector
REPORT_S = 1.0
#: the package each plant sink needs, the name it is imported by, and its least major version
#: (paho-mqtt 2 brought the callback API the MQTT sink is written for)
LIBRARIES = {"mqtt": ("paho-mqtt", "paho.mqtt", 2), "opcua": ("asyncua", "asyncua", 1)}


@dataclass
class Message:
    """One message of the line's publish socket (docs/protocol.md)."""

    #: ``result`` or ``status``
    kind: str
    #: the JSON header, as published
    header: dict[str, Any]
    #: the header's bytes, as published (a sink that passes it on unchanged saves an encode)
    raw: bytes
    #: a result's defect mask: raw uint8, shape ``header["mask_shape"]``; empty otherwise
    mask: bytes = b""


class Feed:
    """The line's results and status, read in a thread into a bounded queue, and the counters
    of the sink that takes them out (reported to the collector every ``REPORT_S``)."""

    def __init__(self, cfg: LineConfig, sink: str, depth: int) -> None:
        self.cfg = cfg
        self.sink = sink
        self.depth = depth
        #: this sink process, as its reports name it (a restarted sink starts new totals)
        self.epoch = int(time.time() * 1000)
        self.stop = StopEvent()  # a signal handler sets it
        self._items: collections.deque[Message] = collections.deque()
        self._cond = threading.Condition()
        self.sent = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.reconnects = 0
        self.up = False
        self._threads: list[threading.Thread] = []
        self._ctx: zmq.Context | None = None

    # -- the queue -----------------------------------------------------------------------
    def put(self, message: Message) -> None:
        """Queue a message; a full queue drops its oldest one (counted ``queue_full``)."""
        with self._cond:
            if len(self._items) >= self.depth:
                self._items.popleft()
                self.dropped["queue_full"] += 1
            self._items.append(message)
            self._cond.notify()

    def get(self, timeout: float) -> Message | None:
        """The oldest queued message, waiting at most ``timeout`` seconds for one."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    @property
    def queued(self) -> int:
        return len(self._items)

    def count_sent(self, n: int = 1) -> None:
        with self._cond:
            self.sent += n

    def count_dropped(self, reason: str, n: int = 1) -> None:
        """Messages this sink could not deliver (``shutdown``: still queued at the stop;
        ``error``: its peer or its encoder refused them)."""
        if n > 0:
            with self._cond:
                self.dropped[reason] += n

    def drop_queued(self, reason: str) -> int:
        """Empty the queue, counting what it held as dropped for ``reason``."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
        self.count_dropped(reason, n)
        return n

    # -- the threads -------------------------------------------------------------------------
    def start(self) -> Feed:
        """Subscribe to the line's publish socket and start reporting the counters."""
        self._ctx = zmq.Context()
        for target, name in ((self._read, "feed-read"), (self._report, "feed-report")):
            thread = threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _guard(self, target: Any) -> None:
        """A thread that fails stops the sink, whose process the supervisor then starts again:
        a sink that reads nothing, or reports nothing, must not look alive."""
        try:
            target()
        except Exception:
            log.exception(
                "%s: %s failed; stopping the sink (the supervisor restarts it)", self.sink, target.__name__
            )
            self.stop.set()
            with self._cond:
                self._cond.notify_all()

    def _read(self) -> None:
        # The line publishes up to 1000 messages ahead of a subscriber before it drops for it;
        # this loop only queues them in memory, so it never falls that far behind.
        sub = sockets.make_socket(self._ctx, zmq.SUB, rcvhwm=10000, linger_ms=0)
        try:
            sub.setsockopt(zmq.SUBSCRIBE, b"result.")
            sub.setsockopt(zmq.SUBSCRIBE, b"status")
            sockets.connect(sub, self.cfg.endpoint("publish"), _keys(self.cfg))
            while not self.stop.is_set():
                if not sub.poll(100):
                    continue
                parts = sub.recv_multipart()
                message = _parse(parts)
                if message is not None:
                    self.put(message)
        finally:
            sub.close(0)

    def _report(self) -> None:
        push = sockets.make_socket(self._ctx, zmq.PUSH, sndhwm=10, linger_ms=200, immediate=True)
        try:
            sockets.connect(push, self.cfg.endpoint("results"), _keys(self.cfg))
            while not self.stop.wait(REPORT_S):
                self._send_report(push)
            self._send_report(push)  # the totals at the stop
        finally:
            push.close(200)

    def _send_report(self, push: zmq.Socket) -> None:
        with self._cond:
            header = {
                "t": "sink_stats",
                "sink": self.sink,
                "epoch": self.epoch,
                "sent": self.sent,
                "dropped": dict(self.dropped),
                "reconnects": self.reconnects,
                "up": self.up,
                "queued": len(self._items),
            }
        # the collector may be restarting: the next report carries the same totals
        with contextlib.suppress(zmq.Again):
            push.send_multipart(protocol.seal(self.cfg.key, header), zmq.NOBLOCK)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop reading, send the last report and close the sockets."""
        self.stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)
        if self._ctx is not None:
            self._ctx.term()


def _keys(cfg: LineConfig) -> Any:
    from edge.keys import line_keys

    return line_keys(cfg)


def _parse(parts: list[bytes]) -> Message | None:
    """A published message as a Message; None for one this sink has no use for."""
    if len(parts) < 2:
        return None
    topic = parts[0]
    try:
        header = json.loads(parts[1])
    except ValueError:  # the line's own socket: only a bug could send this
        log.error("unreadable message on the publish socket (topic %r)", topic[:40])
        return None
    if topic.startswith(b"result."):
        return Message("result", header, parts[1], parts[2] if len(parts) > 2 else b"")
    if topic == b"status":
        return Message("status", header, parts[1])
    return None


# -- start-up checks --------------------------------------------------------------------
def enabled_sinks(cfg: LineConfig) -> list[str]:
    """The plant sinks the config turns on (``mqtt``, ``opcua``)."""
    return [name for name in ("mqtt", "opcua") if getattr(cfg.sinks, name).enabled]


def check_plant_sinks(cfg: LineConfig) -> None:
    """What a plant sink needs before the line starts: its library, and the files and
    environment variable its config names. Each problem is one SinkError line."""
    for name in enabled_sinks(cfg):
        package, module, least = LIBRARIES[name]
        try:
            missing = importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # its parent package is missing or broken
            missing = True
        if missing:
            msg = f"sinks.{name} needs {package}: pip install 'lineside[plant]'"
            raise SinkError(msg)
        found = importlib.metadata.version(package)
        if int(found.split(".")[0]) < least:
            msg = f"sinks.{name} needs {package} >= {least} (found {found}): pip install 'lineside[plant]'"
            raise SinkError(msg)
    if "mqtt" in enabled_sinks(cfg):
        mqtt_password(cfg)
        for key in ("ca_file", "cert_file", "key_file"):
            value = getattr(cfg.sinks.mqtt, key)
            if value and not cfg.resolve(value).is_file():
                msg = f"sinks.mqtt.{key}: {cfg.resolve(value)} is not a file; fix the path in the config"
                raise SinkError(msg)


def mqtt_password(cfg: LineConfig) -> str | None:
    """The MQTT password, from the environment variable or the file the config names; None
    when it names neither. Raises SinkError (one line) when the one it names is missing."""
    sink = cfg.sinks.mqtt
    if sink.password_env:
        value = os.environ.get(sink.password_env)
        if value is None:
            msg = (
                f"sinks.mqtt.password_env: the environment variable {sink.password_env} is not set; "
                f"export it before `lineside run`"
            )
            raise SinkError(msg)
        return value
    if sink.password_file:
        path = Path(cfg.resolve(sink.password_file))
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"sinks.mqtt.password_file: cannot read {path} ({getattr(exc, 'strerror', exc)})"
            raise SinkError(msg) from None
        return lines[0] if lines else ""
    return None
