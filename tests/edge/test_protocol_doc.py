"""A subscriber written from docs/protocol.md alone: it reads the field tables of that page
and checks every message of a running line against them, field by field, both ways (a
field the line sends that the page does not name fails as much as a missing one)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
import zmq

from tests.conftest import MODEL_SIZE
from tests.edge.daemon import Daemon, line_config, synthetic_camera

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
TYPES = {
    "string": (str,),
    "int": (int,),
    "float": (int, float),
    "list": (list,),
    "object": (dict,),
    "object or null": (dict, type(None)),
    "bool": (bool,),
}


def table_after(text: str, heading: str) -> list[list[str]]:
    """The body rows (cells without backticks) of the first table after ``heading``."""
    lines = []
    for line in text[text.index(heading) :].splitlines()[1:]:
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    # the first line is the table's header, the second its |---| rule
    return [[c.strip().strip("`") for c in line.strip().strip("|").split("|")] for line in lines[2:]]


class Contract:
    """What docs/protocol.md promises."""

    def __init__(self, text: str) -> None:
        self.result = {r[0]: (r[1], r[2]) for r in table_after(text, "Header fields:")}
        self.stages = [r[0] for r in table_after(text, "`latency_ms` stages")]
        self.status = {r[0]: (r[1], r[2]) for r in table_after(text, "Status fields:")}
        self.counts = {r[0]: r[1] for r in table_after(text, "Ledger counts")}
        self.reasons = {r[0] for r in table_after(text, "Drop reasons:")}
        self.decisions = set(re.findall(r"`(PASS|FAIL|NO_DECISION)`", text))


def check_fields(message: dict, fields: dict[str, tuple[str, str]], what: str, problems: list[str]) -> None:
    for name, (kind, present) in fields.items():
        if name not in message:
            if present == "always":
                problems.append(f"{what}: {name} missing")
            continue
        value = message[name]
        if not isinstance(value, TYPES[kind]) or (kind == "int" and isinstance(value, bool)):
            problems.append(f"{what}: {name} is {value!r}, the page says {kind}")
    for name in set(message) - set(fields):
        problems.append(f"{what}: {name} is not on the page")


def check_result(doc: Contract, parts: list[bytes], problems: list[str]) -> dict:
    topic, raw, *rest = parts
    header = json.loads(raw)
    what = f"result {header.get('cam')}#{header.get('seq')}"
    check_fields(header, doc.result, what, problems)
    if topic != f"result.{header.get('cam')}".encode():
        problems.append(f"{what}: topic {topic!r}")
    if header.get("decision") not in doc.decisions:
        problems.append(f"{what}: decision {header.get('decision')!r}")
    if set(header.get("latency_ms", {})) != set(doc.stages):
        problems.append(f"{what}: latency stages {sorted(header.get('latency_ms', {}))}")
    mask = rest[0] if rest else b""
    if "mask_shape" in header:
        h, w = header["mask_shape"]
        if len(mask) != h * w:
            problems.append(f"{what}: mask has {len(mask)} bytes for mask_shape {header['mask_shape']}")
    elif mask:
        problems.append(f"{what}: a mask without mask_shape")
    return header


def check_counts(counts: dict, doc: Contract, what: str, per_camera: bool, problems: list[str]) -> None:
    names = {n for n in doc.counts if per_camera or n != "epochs"}
    if set(counts) != names:
        problems.append(f"{what}: counts {sorted(set(counts) ^ names)} differ from the page")
        return
    if counts["captured"] != counts["decided"] + counts["dropped"] + counts["in_flight"]:
        problems.append(f"{what}: captured != decided + dropped + in_flight: {counts}")
    if set(counts["dropped_by_reason"]) - doc.reasons:
        problems.append(f"{what}: undocumented drop reasons {counts['dropped_by_reason']}")
    if sum(counts["dropped_by_reason"].values()) != counts["dropped"]:
        problems.append(f"{what}: dropped_by_reason does not add up to dropped")


def check_status(doc: Contract, parts: list[bytes], problems: list[str]) -> dict:
    status = json.loads(parts[1])
    check_fields(status, doc.status, "status", problems)
    check_counts(status.get("totals", {}), doc, "status totals", False, problems)
    for cam, counts in status.get("cameras", {}).items():
        check_counts(counts, doc, f"status camera {cam}", True, problems)
    if set(status.get("lost", {})) - doc.reasons:
        problems.append(f"status: lost names undocumented reasons {status['lost']}")
    return status


def test_every_message_of_a_run_follows_the_protocol_page(line_package: Path, tmp_path: Path) -> None:
    doc = Contract(DOC.read_text())
    assert len(doc.result) >= 16 and len(doc.stages) == 7 and "shutdown" in doc.reasons
    flaky = synthetic_camera("flaky", size=MODEL_SIZE, fps=10, seed=81, disconnect_at=20, black_at=10)
    flaky.update(reconnect_initial_s=0.3)
    live = synthetic_camera("live", size=MODEL_SIZE, fps=15, seed=82, policy="latest")
    cfg = line_config(tmp_path, line_package, [flaky, live])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100000)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(cfg["endpoints"]["publish"])
    messages: list[list[bytes]] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            if sock.poll(100):
                messages.append(sock.recv_multipart())

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    daemon = Daemon(cfg, tmp_path, duration=8).start()
    try:
        code = daemon.wait(60)
    finally:
        daemon.kill()
        for _ in range(50):  # the final status may still be on its way
            if any(m[0] == b"status" and json.loads(m[1]).get("final") for m in messages):
                break
            time.sleep(0.1)
        stop.set()
        reader.join(5)
        sock.close()
        ctx.term()
    assert code == 0, daemon.output()
    problems: list[str] = []
    results, statuses = [], []
    for parts in messages:
        if parts[0].startswith(b"result."):
            results.append(check_result(doc, parts, problems))
        elif parts[0] == b"status":
            statuses.append(check_status(doc, parts, problems))
        else:
            problems.append(f"topic {parts[0]!r} is not on the page")
    assert not problems, "\n".join(sorted(set(problems))[:40])
    # The run showed what the page describes: faults, masks, drops, and one final status.
    assert {r["decision"] for r in results} >= {"NO_DECISION"} and len(results) > 50
    assert any("mask_shape" in r for r in results)
    assert any(r["reason"].startswith("camera down:") for r in results)
    assert [s.get("final", False) for s in statuses].count(True) == 1 and statuses[-1]["final"]
    assert statuses[-1]["totals"]["in_flight"] == 0
