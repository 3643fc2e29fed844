"""The OPC UA sink against a real OPC UA client (asyncua's Client, not our code): while a line
runs, the client browses the documented node tree (docs/integration.md), reads a camera's last
decision, receives data changes on a subscription, sees the line ready, and resets the
counters with the method."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODEL_SIZE, need_peer
from tests.edge.daemon import finish, free_port, line_config, start_line, synthetic_camera

pytestmark = pytest.mark.slow

CAMERA_NODES = {
    "Decision",
    "DecisionCode",
    "Reason",
    "DefectCount",
    "DefectArea",
    "Epoch",
    "Seq",
    "Time",
    "DecidedTime",
    "Counters",
}
CODES = {"PASS": 1, "FAIL": 2, "NO_DECISION": 3}


class Changes:
    """asyncua's subscription handler: every data change, by node id."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = {}

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.seen.setdefault(node.nodeid.Identifier, []).append(val)


async def connect(url: str, timeout: float) -> Any:
    """An asyncua client connected to ``url``, trying until the server listens."""
    from asyncua import Client

    end = time.monotonic() + timeout
    while True:
        client = Client(url, timeout=5)
        try:
            await client.connect()
            return client
        except (OSError, asyncio.TimeoutError):
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.3)


async def wait_until(predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def inspect_line(url: str) -> None:
    client = await connect(url, 90)
    try:
        idx = await client.get_namespace_index("urn:lineside:test")

        def node(name: str) -> Any:
            return client.get_node(f"ns={idx};s={name}")

        async def names(n: Any) -> set[str]:
            return {(await child.read_browse_name()).Name for child in await n.get_children()}

        # the tree, browsed from the standard Objects folder
        assert {"Line", "Cameras"} <= await names(client.nodes.objects)
        assert {"Name", "Ready", "NotReady", "StatusTime", "Counters", "ResetCounters"} <= await names(
            node("Line")
        )
        assert await names(node("Cameras")) == {"cam1"}
        assert await names(node("Cameras.cam1")) == CAMERA_NODES
        assert await node("Line.Name").read_value() == "test"

        # data changes while the line runs: new decisions, and the line becoming ready
        changes = Changes()
        subscription = await client.create_subscription(100, changes)
        await subscription.subscribe_data_change([node("Cameras.cam1.Seq"), node("Line.Ready")])

        async def deciding() -> bool:
            seqs = {s for s in changes.seen.get("Cameras.cam1.Seq", []) if s >= 0}
            return len(seqs) >= 3 and True in changes.seen.get("Line.Ready", [])

        assert await wait_until(deciding, 60), changes.seen
        decision, code, reason, when = await client.read_values(
            [node(f"Cameras.cam1.{n}") for n in ("Decision", "DecisionCode", "Reason", "Time")]
        )
        assert decision in CODES and code == CODES[decision] and reason, (decision, code, reason)
        now = datetime.now(timezone.utc)
        assert now - timedelta(seconds=30) < when.replace(tzinfo=timezone.utc) <= now, when
        assert await node("Line.NotReady").read_value() == ""

        # the counters, and the method that resets them
        async def counted() -> bool:
            return await node("Line.Counters.Total").read_value() >= 5

        assert await wait_until(counted, 30)
        counts = await client.read_values(
            [node(f"Line.Counters.{n}") for n in ("PASS", "FAIL", "NO_DECISION")]
        )
        total, since = await client.read_values([node("Line.Counters.Total"), node("Line.Counters.Since")])
        assert abs(sum(counts) - total) <= 2, (counts, total)  # two reads, a decision may fall between
        await node("Line").call_method(f"{idx}:ResetCounters")
        after = await client.read_values(
            [node("Line.Counters.Total"), node("Cameras.cam1.Counters.Total"), node("Line.Counters.Since")]
        )
        assert after[0] <= 2 and after[1] <= 2 and after[0] < total, (after, total)  # 10 decisions a second
        assert after[2] > since, (after[2], since)

        async def counting_again() -> bool:
            return await node("Line.Counters.Total").read_value() >= 3

        assert await wait_until(counting_again, 10)
        await subscription.delete()
    finally:
        await client.disconnect()


def test_a_real_opcua_client_reads_subscribes_and_resets(line_package: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("asyncua") is None:
        need_peer("asyncua not found: pip install 'lineside[plant]' (.ci/run installs the dev extra)")
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/lineside/"
    cam = synthetic_camera("cam1", size=MODEL_SIZE, fps=10, seed=7, policy="latest")
    opcua = {"enabled": True, "endpoint": url, "retry_initial_s": 0.2, "retry_max_s": 1}
    cfg = line_config(tmp_path, line_package, [cam], sinks={"opcua": opcua})
    # Something else holds the port when the line starts: the sink must try again, with backoff,
    # and serve once the port is free (the line does not wait for it meanwhile).
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    daemon, sub = start_line(tmp_path, cfg)
    try:
        assert sub.wait_for(lambda _: "cannot listen on" in daemon.output(), 90), daemon.output()
        assert sub.wait_for(lambda s: len(s.results) >= 3, 30), "the line waited for its OPC UA sink"
        squatter.close()
        asyncio.run(inspect_line(url))
    finally:
        squatter.close()
        daemon.terminate()
        code = finish(daemon, sub)
    assert code == 0, daemon.output()
    assert "sink:opcua" in sub.statuses[-1]["processes"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"sinks": {"opcua": {"endpoint": "tcp://127.0.0.1:4840"}}},
            "sinks.opcua.endpoint is 'tcp://127.0.0.1:4840'; must be opc.tcp://HOST:PORT/PATH",
        ),
        (
            {"sinks": {"opcua": {"enabled": True, "endpoint": "opc.tcp://0.0.0.0:4840/lineside/"}}},
            "sinks.opcua.endpoint (opc.tcp://0.0.0.0:4840/lineside/) would let anyone on the network read "
            "the line and reset its counters (no OPC UA security); bind 127.0.0.1, or set "
            "security.insecure: true",
        ),
        ({"sinks": {"opcua": {"queue": 0}}}, "sinks.opcua.queue is 0; must be between 1 and 1000000"),
    ],
    ids=["scheme", "beyond-loopback", "queue"],
)
def test_bad_opcua_settings_are_one_line_naming_the_key(data: dict, expected: str) -> None:
    from edge.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"cameras": [{"id": "cam1"}], **data}, "line.yaml")
    assert str(err.value).startswith(f"line.yaml: {expected}"), str(err.value)


def test_a_network_endpoint_is_accepted_when_the_config_says_so() -> None:
    from edge.config import parse_config

    sinks = {"opcua": {"enabled": True, "endpoint": "opc.tcp://0.0.0.0:4840/lineside/"}}
    cfg = parse_config({"cameras": [{"id": "cam1"}], "sinks": sinks, "security": {"insecure": True}})
    assert cfg.sinks.opcua.endpoint == "opc.tcp://0.0.0.0:4840/lineside/"
