"""The MQTT sink (``sinks.mqtt``): every decision and the line's status, to a broker.

A process of its own (role ``sink:mqtt``) that subscribes to the line's publish socket
(edge/sinks/feed.py), so a broker that is slow, down or gone never slows the line. It
publishes each result on ``<topic_prefix>/<name>/<camera>/result`` (QoS ``qos``, not
retained) and each status on ``<topic_prefix>/<name>/status`` (QoS 1, retained, with
``"online": true``). Its last will, on the status topic, says ``"online": false``; a clean
stop says so too. docs/integration.md is the subscriber's side.

The connection is driven here, not by paho's own thread, so that reconnects follow the
line's capped backoff (edge/sources/backoff.py) and every message is accounted for: sent
when the broker acknowledged it (QoS 1 and 2) or paho wrote it (QoS 0); dropped when the
queue was full (``queue_full``), when a QoS 0 message died with its connection
(``connection_lost``), when paho refused it (``error``) or when it was still waiting at the
stop (``shutdown``). At most ``MAX_UNACKED`` messages wait for the broker's acknowledgement;
paho sends those again after a reconnect, and the rest wait in the bounded queue.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import ssl
import time
from typing import Any

from edge.config import LineConfig
from edge.sinks.feed import Feed, Message, mqtt_password
from edge.sources.backoff import Backoff

log = logging.getLogger(__name__)

#: messages handed to paho and not yet acknowledged by the broker, at most
MAX_UNACKED = 100
#: how long a TCP connect (and TLS handshake) to the broker may take
CONNECT_TIMEOUT_S = 3.0
#: how long the broker may take to answer a connect (CONNACK) before the attempt counts as failed
CONNACK_TIMEOUT_S = 10.0
#: how long a stop may spend delivering what is queued and saying offline
STOP_S = 1.5


def result_topic(cfg: LineConfig, camera: str) -> str:
    return f"{cfg.sinks.mqtt.topic_prefix}/{cfg.name}/{camera}/result"


def status_topic(cfg: LineConfig) -> str:
    return f"{cfg.sinks.mqtt.topic_prefix}/{cfg.name}/status"


def mask_png(header: dict[str, Any], mask: bytes) -> str | None:
    """The defect mask of a result as a base64 PNG (None when the result has none)."""
    shape = header.get("mask_shape")
    if not shape or len(mask) != shape[0] * shape[1]:
        return None
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.frombuffer(mask, np.uint8).reshape(shape[0], shape[1]))
    return base64.b64encode(png.tobytes()).decode() if ok else None


class MqttSink:
    """See the module docstring."""

    def __init__(self, cfg: LineConfig) -> None:
        self.cfg = cfg
        self.conf = cfg.sinks.mqtt
        self.feed = Feed(cfg, "mqtt", self.conf.queue)
        self.backoff = Backoff(initial_s=self.conf.retry_initial_s, cap_s=self.conf.retry_max_s)
        self.status_topic = status_topic(cfg)
        #: ``down``, ``connecting`` (CONNECT sent, no CONNACK yet) or ``up``
        self.state = "down"
        self.state_since = time.monotonic()
        self.ever_up = False
        #: mid -> qos of messages handed to paho and not yet acknowledged
        self.pending: dict[int, int] = {}
        #: mids acknowledged before publish() returned them (paho can call back inside it)
        self.early: set[int] = set()
        self.last_status: dict[str, Any] | None = None
        self.attempts = 0
        #: when the CONNECT went out (state ``connecting``)
        self.connect_sent = 0.0
        #: the next connection attempt waits the backoff delay first (set by every failure)
        self.wait_first = False
        self.client = self._make_client()

    def _make_client(self) -> Any:
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        conf = self.conf
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=conf.client_id or f"lineside-{self.cfg.name}",
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        offline = {"line": self.cfg.name, "online": False, "reason": "the sink lost its connection"}
        client.will_set(self.status_topic, json.dumps(offline), qos=1, retain=True)
        if conf.username:
            client.username_pw_set(conf.username, mqtt_password(self.cfg))
        if conf.tls or conf.ca_file or conf.cert_file or conf.key_file:
            resolve = self.cfg.resolve
            client.tls_set(
                ca_certs=str(resolve(conf.ca_file)) if conf.ca_file else None,
                certfile=str(resolve(conf.cert_file)) if conf.cert_file else None,
                keyfile=str(resolve(conf.key_file)) if conf.key_file else None,
            )
        client.max_inflight_messages_set(MAX_UNACKED)
        # the TCP connect blocks this loop: bound it, so a stop is never kept waiting long
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # -- paho's callbacks (called from client.loop(), in this thread) ----------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.conf.host, self.conf.port, reason)
            self._set_down()
            return
        down_s = time.monotonic() - self.state_since
        if self.ever_up:
            self.feed.reconnects += 1
            log.info("broker connected again after %.1f s (%d attempt(s))", down_s, self.attempts)
        else:
            where = f"{self.conf.topic_prefix}/{self.cfg.name}/#"
            log.info("publishing to mqtt://%s:%d on %s", self.conf.host, self.conf.port, where)
        self.ever_up, self.state, self.state_since, self.attempts = True, "up", time.monotonic(), 0
        self.feed.up = True
        self.backoff.reset()
        # QoS 0 messages that were on their way when the connection died are gone
        lost = [mid for mid, qos in self.pending.items() if qos == 0]
        for mid in lost:
            del self.pending[mid]
        self.feed.count_dropped("connection_lost", len(lost))
        # the retained status still says offline (our last will): say online at once
        self._publish_status(self.last_status or {"line": self.cfg.name}, online=True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self.state == "up" and not self.feed.stop.is_set():
            log.warning(
                "broker %s:%d lost (%s); retrying with backoff, results wait in a queue of %d "
                "(the oldest dropped and counted when full)",
                self.conf.host,
                self.conf.port,
                reason,
                self.conf.queue,
            )
        self._set_down()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if self.pending.pop(mid, None) is None:
            self.early.add(mid)
        if getattr(reason, "is_failure", False):
            self.feed.count_dropped("error")
        else:
            self.feed.count_sent()

    def _set_down(self) -> None:
        if self.state == "up":
            self.state_since = time.monotonic()
        self.state, self.wait_first = "down", True
        self.feed.up = False

    # -- publishing -----------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> None:
        from paho.mqtt.client import MQTT_ERR_NO_CONN, MQTT_ERR_SUCCESS

        try:
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:  # a payload over MQTT's 256 MB, a topic paho refuses
            log.error("cannot publish on %s: %s", topic, exc)
            self.feed.count_dropped("error")
            return
        # NO_CONN with QoS > 0: paho keeps it and sends it after the reconnect
        if info.rc == MQTT_ERR_SUCCESS or (info.rc == MQTT_ERR_NO_CONN and qos > 0):
            if info.mid in self.early:
                self.early.discard(info.mid)
            else:
                self.pending[info.mid] = qos
        else:
            self.feed.count_dropped("connection_lost" if info.rc == MQTT_ERR_NO_CONN else "error")

    def _publish_status(self, header: dict[str, Any], online: bool) -> None:
        self._publish(self.status_topic, json.dumps({**header, "online": online}), 1, True)

    def deliver(self, message: Message) -> None:
        """One message of the line to the broker."""
        if message.kind == "status":
            self.last_status = message.header
            self._publish_status(message.header, online=True)
            return
        payload: bytes | str = message.raw
        if self.conf.include_mask:
            png = mask_png(message.header, message.mask)
            if png is not None:
                payload = json.dumps({**message.header, "mask_png": png})
        self._publish(result_topic(self.cfg, message.header["cam"]), payload, self.conf.qos, False)

    # -- the loop ------------------------------------------------------------------------
    def connect(self) -> None:
        """One connection attempt, after the backoff delay when the last one failed."""
        from paho.mqtt.client import MQTT_ERR_SUCCESS

        if self.wait_first and self.backoff.wait(self.feed.stop):
            return  # stopped while waiting
        self.attempts += 1
        try:
            rc = self.client.connect(self.conf.host, self.conf.port, self.conf.keepalive_s)
        except (OSError, ssl.SSLError) as exc:
            rc, why = None, getattr(exc, "strerror", None) or str(exc)
        else:
            why = f"paho error {rc}"
        if rc == MQTT_ERR_SUCCESS:
            self.state, self.connect_sent = "connecting", time.monotonic()
            return
        self._set_down()
        # the first failure and one in ten after it are worth a line; the rest only count
        say = log.warning if self.attempts == 1 or self.attempts % 10 == 0 else log.debug
        say(
            "cannot connect to the broker %s:%d (%s), attempt %d; retrying with backoff",
            self.conf.host,
            self.conf.port,
            why,
            self.attempts,
        )

    def step(self) -> None:
        """Network events, then at most one queued message (waiting a moment for one)."""
        from paho.mqtt.client import MQTT_ERR_SUCCESS

        if self.state == "down":
            self.connect()
            return
        rc = self.client.loop(timeout=0.0)
        if rc != MQTT_ERR_SUCCESS:
            self._set_down()
            return
        if self.state == "connecting":
            if time.monotonic() - self.connect_sent > CONNACK_TIMEOUT_S:
                log.warning("the broker did not answer the connect within %.0f s", CONNACK_TIMEOUT_S)
                self.client.disconnect()
                self._set_down()
            else:
                time.sleep(0.01)
            return
        if len(self.pending) >= MAX_UNACKED:
            time.sleep(0.01)  # the broker is behind: let the queue take the wait
            return
        message = self.feed.get(timeout=0.02)
        if message is not None:
            self.deliver(message)

    def run(self) -> None:
        self.feed.start()
        try:
            while not self.feed.stop.is_set():
                self.step()
        finally:
            self.finish()

    def finish(self) -> None:
        """Deliver what is queued for at most STOP_S, say offline (retained), disconnect, and
        count what is left as dropped (``shutdown``)."""
        end = time.monotonic() + STOP_S
        if self.state == "up":
            while time.monotonic() < end and self.state == "up" and self.feed.queued:
                message = self.feed.get(timeout=0)
                if message is not None:
                    self.deliver(message)
                self.client.loop(timeout=0.0)
            self._publish_status(self.last_status or {"line": self.cfg.name}, online=False)
            while time.monotonic() < end and self.state == "up" and self.pending:
                self.client.loop(timeout=0.02)
            self.client.disconnect()
        self.feed.drop_queued("shutdown")
        self.feed.count_dropped("shutdown", len(self.pending))
        self.pending.clear()
        self.feed.close()


def mqtt_main(cfg_dict: dict, log_level: int) -> None:
    """Entry point of the spawned MQTT sink process."""
    from edge.config import from_dict
    from edge.process import die_with_parent, setup_process

    cfg = from_dict(cfg_dict)
    setup_process("sink:mqtt", log_level)
    sink = MqttSink(cfg)
    die_with_parent(sink.feed.stop.set)
    signal.signal(signal.SIGTERM, lambda *_: sink.feed.stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sink.run()
