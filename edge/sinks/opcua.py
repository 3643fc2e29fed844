"""The OPC UA sink (``sinks.opcua``): a server with the line's state, for PLCs and MES.

A process of its own (role ``sink:opcua``) that subscribes to the line's publish socket
(edge/sinks/feed.py), so an OPC UA client, however slow, never slows the line. Its nodes
live in the namespace ``sinks.opcua.namespace`` (default ``urn:lineside:<name>``), with
string node ids that a PLC can be configured with once (docs/integration.md has the tree):

- ``Line``: ``Name``, ``Ready``, ``NotReady`` (the /readyz reasons), ``StatusTime``, the
  counters ``Counters.PASS``/``FAIL``/``NO_DECISION``/``Total``/``Since``, and the method
  ``ResetCounters()``;
- ``Cameras.<id>``: the last decision (``Decision``, ``DecisionCode``, ``Reason``,
  ``DefectCount``, ``DefectArea``, ``Epoch``, ``Seq``, ``Time``, ``DecidedTime``) and the
  camera's own ``Counters``.

The counters count the decisions this server has seen since it started or since the last
``ResetCounters`` call (a PLC acknowledges a shift or a batch with it); the line's own totals,
which never go back, are in its status message and metrics. A server that cannot listen
(the port is taken) tries again with the line's capped backoff; updates wait meanwhile in
the bounded queue (the oldest dropped and counted when it is full).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
import urllib.parse
from datetime import datetime, timezone
from typing import Any

from edge.config import LineConfig, opcua_host_port
from edge.sinks.feed import Feed, Message
from edge.sources.backoff import Backoff

log = logging.getLogger(__name__)

OUTCOMES = ("PASS", "FAIL", "NO_DECISION")
#: DecisionCode: a number for PLCs that compare integers, not strings
DECISION_CODES = {"": 0, "PASS": 1, "FAIL": 2, "NO_DECISION": 3}
#: updates applied in one go before the server gets the loop back (clients, subscriptions)
BATCH = 200
#: how long the server may take to close its clients' sessions at the stop
STOP_S = 1.0
#: the line is taken as not ready after this many status periods without a status (or 3 s)
STALE_PERIODS = 3


def namespace_uri(cfg: LineConfig) -> str:
    """The namespace of the line's nodes: the configured one, or ``urn:lineside:<name>``."""
    return cfg.sinks.opcua.namespace or f"urn:lineside:{urllib.parse.quote(cfg.name, safe='')}"


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


#: a camera's variables: name -> (OPC UA type name, initial value)
CAMERA_VARIABLES = {
    "Decision": ("String", ""),
    "DecisionCode": ("Int16", 0),
    "Reason": ("String", ""),
    "DefectCount": ("Int32", 0),
    "DefectArea": ("Int64", 0),
    "Epoch": ("Int64", 0),
    "Seq": ("Int64", -1),
    "Time": ("DateTime", None),
    "DecidedTime": ("DateTime", None),
}


class OpcuaSink:
    """See the module docstring."""

    def __init__(self, cfg: LineConfig) -> None:
        self.cfg = cfg
        self.conf = cfg.sinks.opcua
        self.feed = Feed(cfg, "opcua", self.conf.queue)
        self.backoff = Backoff(initial_s=self.conf.retry_initial_s, cap_s=self.conf.retry_max_s)
        self.uri = namespace_uri(cfg)
        self.cameras = [cam.id for cam in cfg.cameras]
        #: node id (string part) -> (type name, value): the state, kept here so that a server
        #: made again after a failure starts from it
        self.values: dict[str, tuple[str, Any]] = {}
        started = _when(time.time())
        self.values.update(
            {
                "Line.Name": ("String", cfg.name),
                "Line.Ready": ("Boolean", False),
                "Line.NotReady": ("String", "no status from the line yet"),
                "Line.StatusTime": ("DateTime", started),
                "Line.Counters.Since": ("DateTime", started),
            }
        )
        self._zero_counters()
        for cam in self.cameras:
            for name, (kind, value) in CAMERA_VARIABLES.items():
                self.values[f"Cameras.{cam}.{name}"] = (kind, value if value is not None else started)
        self.status_seen = 0.0
        self.server: Any = None
        self.idx = 0
        self.dirty: set[str] = set()
        self.ever_up = False

    def _zero_counters(self) -> None:
        for outcome in (*OUTCOMES, "Total"):
            self.values[f"Line.Counters.{outcome}"] = ("Int64", 0)
            for cam in self.cameras:
                self.values[f"Cameras.{cam}.Counters.{outcome}"] = ("Int64", 0)

    def _set(self, node: str, value: Any) -> None:
        kind, _ = self.values[node]
        self.values[node] = (kind, value)
        self.dirty.add(node)

    def _bump(self, node: str) -> None:
        self._set(node, self.values[node][1] + 1)

    # -- the state ----------------------------------------------------------------------------
    def apply(self, message: Message) -> None:
        """One message of the line into the state (the nodes follow in ``flush``)."""
        h = message.header
        if message.kind == "status":
            self.status_seen = time.monotonic()
            self._set("Line.StatusTime", _when(time.time()))
            self._set("Line.Ready", bool(h.get("ready", False)))
            self._set("Line.NotReady", "; ".join(h.get("not_ready", [])))
            return
        cam, outcome = h.get("cam"), h.get("decision", "")
        if cam not in self.cameras:
            return
        base = f"Cameras.{cam}"
        self._set(f"{base}.Decision", outcome)
        self._set(f"{base}.DecisionCode", DECISION_CODES.get(outcome, 0))
        self._set(f"{base}.Reason", h.get("reason", ""))
        self._set(f"{base}.DefectCount", int(h.get("defect_count", 0)))
        self._set(f"{base}.DefectArea", int(h.get("defect_area", 0)))
        self._set(f"{base}.Epoch", int(h.get("epoch", 0)))
        self._set(f"{base}.Seq", int(h.get("seq", 0)))
        self._set(f"{base}.Time", _when(h.get("ts", 0.0)))
        self._set(f"{base}.DecidedTime", _when(h.get("decided_ts", 0.0)))
        if outcome in OUTCOMES:
            for node in (f"{base}.Counters.{outcome}", f"{base}.Counters.Total"):
                self._bump(node)
            for node in (f"Line.Counters.{outcome}", "Line.Counters.Total"):
                self._bump(node)

    def check_stale(self) -> None:
        """A line that stopped sending its status is not ready (it may be gone)."""
        limit = max(STALE_PERIODS * self.cfg.status_interval_s, 3.0)
        if self.status_seen and time.monotonic() - self.status_seen > limit:
            if self.values["Line.Ready"][1]:
                log.warning("no status from the line for %.0f s: Ready is false", limit)
            self._set("Line.Ready", False)
            self._set("Line.NotReady", f"no status from the line for {limit:.0f} s")

    def reset_counters(self) -> None:
        """What ``ResetCounters`` does: every counter to 0, ``Since`` to now."""
        self._zero_counters()
        self.dirty.update(n for n in self.values if ".Counters." in n)
        self._set("Line.Counters.Since", _when(time.time()))
        log.info("counters reset by an OPC UA client")

    # -- the server ------------------------------------------------------------------------------
    async def build(self) -> Any:
        """A server with the node tree, not yet listening."""
        from asyncua import Server, ua
        from asyncua.common.methods import uamethod

        server = Server()
        await server.init()
        server.set_endpoint(self.conf.endpoint)
        server.set_server_name(f"lineside {self.cfg.name}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = self.idx = await server.register_namespace(self.uri)

        def nid(name: str) -> Any:
            return ua.NodeId(name, idx)

        async def folder(parent: Any, name: str, path: str) -> Any:
            return await parent.add_object(nid(path), ua.QualifiedName(name, idx))

        async def variables(parent: Any, prefix: str) -> None:
            for node, (kind, value) in self.values.items():
                head, _, name = node.rpartition(".")
                if head == prefix:
                    # read-only for clients (asyncua's default): only the line writes its state
                    await parent.add_variable(
                        nid(node), ua.QualifiedName(name, idx), value, getattr(ua.VariantType, kind)
                    )

        line = await folder(server.nodes.objects, "Line", "Line")
        await variables(line, "Line")
        await variables(await folder(line, "Counters", "Line.Counters"), "Line.Counters")

        @uamethod
        async def reset(parent: Any) -> None:
            self.reset_counters()
            await self.flush()  # the caller reads zeros as soon as the call returns

        await line.add_method(
            nid("Line.ResetCounters"), ua.QualifiedName("ResetCounters", idx), reset, [], []
        )
        cameras = await folder(server.nodes.objects, "Cameras", "Cameras")
        for cam in self.cameras:
            node = await folder(cameras, cam, f"Cameras.{cam}")
            await variables(node, f"Cameras.{cam}")
            await variables(
                await folder(node, "Counters", f"Cameras.{cam}.Counters"), f"Cameras.{cam}.Counters"
            )
        return server

    async def flush(self) -> None:
        """Write the changed values to their nodes (data-change notifications follow)."""
        from asyncua import ua

        dirty, self.dirty = self.dirty, set()
        for node in dirty:
            kind, value = self.values[node]
            variant = ua.Variant(value, getattr(ua.VariantType, kind))
            await self.server.write_attribute_value(ua.NodeId(node, self.idx), ua.DataValue(variant))

    def probe(self) -> None:
        """Raise OSError when the endpoint cannot be bound now: cheaper than building a server
        (seconds of CPU) only to see it fail."""
        host, port = opcua_host_port(self.conf.endpoint)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # as asyncio's server does: a port that only lingers in TIME_WAIT is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))

    async def serve(self) -> None:
        """Listen, then apply the line's messages until the stop. Raises OSError when the
        endpoint cannot be bound."""
        self.probe()
        self.server = await self.build()
        await self.server.start()  # OSError: the port is taken, the address is not ours
        if self.ever_up:
            self.feed.reconnects += 1
        self.ever_up, self.feed.up = True, True
        self.backoff.reset()
        log.info("OPC UA server on %s, namespace %s", self.conf.endpoint, self.uri)
        try:
            stale_check = 0.0
            while not self.feed.stop.is_set():
                batch: list[Message] = []
                for _ in range(BATCH):
                    message = self.feed.get(timeout=0)
                    if message is None:
                        break
                    batch.append(message)
                    self.apply(message)
                if time.monotonic() - stale_check > 1.0:
                    stale_check = time.monotonic()
                    self.check_stale()
                await self.flush()
                self.feed.count_sent(len(batch))
                await asyncio.sleep(0 if len(batch) == BATCH else 0.02)
        finally:
            self.feed.up = False
            # closes the clients' sessions; bounded, since the supervisor kills a slow stop
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.server.stop(), STOP_S)

    async def run(self) -> None:
        self.feed.start()
        try:
            while not self.feed.stop.is_set():
                try:
                    await self.serve()
                except OSError as exc:
                    # the first failure is worth a line, then one in ten
                    say = log.warning if self.backoff.attempts % 10 == 0 else log.debug
                    say(
                        "cannot listen on %s (%s); retrying with backoff",
                        self.conf.endpoint,
                        exc.strerror or exc,
                    )
                    delay = self.backoff.next_delay()
                    end = time.monotonic() + delay
                    while time.monotonic() < end and not self.feed.stop.is_set():
                        await asyncio.sleep(0.05)
        finally:
            self.feed.drop_queued("shutdown")
            self.feed.close()


def opcua_main(cfg_dict: dict, log_level: int) -> None:
    """Entry point of the spawned OPC UA sink process."""
    from edge.config import from_dict
    from edge.process import die_with_parent, setup_process

    cfg = from_dict(cfg_dict)
    setup_process("sink:opcua", log_level)
    # asyncua logs every node it makes at INFO, and warns that the server has no certificate
    # (which the config chose: docs/integration.md)
    logging.getLogger("asyncua").setLevel(max(log_level, logging.ERROR))
    # ... and a server that cannot bind with a traceback, which this sink says in one line
    logging.getLogger("asyncua.server.server").setLevel(max(log_level, logging.CRITICAL))
    sink = OpcuaSink(cfg)
    die_with_parent(sink.feed.stop.set)
    signal.signal(signal.SIGTERM, lambda *_: sink.feed.stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(sink.run())
