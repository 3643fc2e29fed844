"""The ledger's rules one at a time: late decisions, saved books, and the sweeps that count
the frames a dead process took with it (the collector in-process, real ZeroMQ frames)."""

from __future__ import annotations

import json
import time

import pytest
import zmq

from edge import collector as collector_module
from edge import protocol
from edge.accounting import DUPLICATE, LATE, NEW, Ledger
from edge.collector import Collector
from edge.config import DEFAULT_MAX_AGE_MS, STAGE_FLOOR_S, ConfigError, parse_config, stage_marks


def test_a_late_decision_replaces_a_lost_drop_but_never_a_chosen_one() -> None:
    led = Ledger()
    led.captured("a", 1, 4)
    assert led.dropped("a", 1, 0, "worker_lost")
    assert led.dropped("a", 1, 1, "superseded")
    assert led.decided("a", 1, 0, "PASS") == LATE  # the worker was only slow
    assert led.decided("a", 1, 1, "FAIL") == DUPLICATE  # a superseded frame stays dropped
    assert led.decided("a", 1, 0, "PASS") == DUPLICATE  # and a decision counts once
    assert led.decided("a", 1, 2, "FAIL") == NEW
    t = led.totals()
    assert (t["decided"], t["dropped"], t["late"], t["in_flight"]) == (2, 1, 1, 1)
    assert t["dropped_by_reason"] == {"superseded": 1}
    assert t["PASS"] == 1 and t["FAIL"] == 1 and t["NO_DECISION"] == 0  # every count present


def test_saved_books_read_back_the_same() -> None:
    led = Ledger()
    led.captured("a", 7, 10)
    for seq in (0, 1, 5):
        led.decided("a", 7, seq, "PASS")
    led.dropped("a", 7, 6, "router_lost")
    again = Ledger.from_json(json.loads(json.dumps(led.to_json())))
    assert again.snapshot() == led.snapshot()
    assert again.unaccounted("a", 7) == [2, 3, 4, 7, 8, 9]
    assert again.decided("a", 7, 6, "FAIL") == LATE  # revocable drops survive the round trip


def test_lossless_cameras_never_drop_as_too_old_unless_told() -> None:
    cams = [{"id": "t", "policy": "lossless"}, {"id": "l", "policy": "latest"}, {"id": "x", "max_age_ms": 50}]
    cfg = parse_config({"cameras": cams})
    assert [c.max_age_ms for c in cfg.cameras] == [0.0, DEFAULT_MAX_AGE_MS["latest"], 50.0]
    with pytest.raises(ConfigError, match=r"cameras\[0\].max_age_ms is -1.0; must be >= 0"):
        parse_config({"cameras": [{"id": "t", "max_age_ms": -1.0}]})


@pytest.mark.parametrize("timeout_s", [0.5, 1, 6, 10, 60])
def test_shutdown_stages_keep_their_order_and_a_floor(timeout_s: float) -> None:
    marks = stage_marks(timeout_s)
    gaps = [b - a for a, b in zip((0.0, *marks), marks, strict=False)]
    assert all(g >= f - 1e-9 for g, f in zip(gaps, STAGE_FLOOR_S, strict=True)), marks
    assert marks[-1] == pytest.approx(max(timeout_s, marks[-1]))
    if timeout_s >= 10:
        assert marks[-1] == timeout_s  # the configured bound holds when it leaves room for the floors


# -- sweeps, on a collector fed real messages -------------------------------------------------
KEY = bytes(range(32))


def frame(header: dict) -> list[zmq.Frame]:
    return [zmq.Frame(json.dumps(header).encode())]


def sealed(header: dict) -> list[zmq.Frame]:
    """A message of the line's own processes (camera stats, router report): sealed."""
    return [zmq.Frame(part) for part in protocol.seal(KEY, header)]


@pytest.fixture
def collector(monkeypatch, tmp_path):
    monkeypatch.setattr(collector_module, "SWEEP_GRACE_S", 0.0)
    cfg = parse_config(
        {"cameras": [{"id": "a", "policy": "lossless"}], "sinks": {"decision_log": "", "ng_store": ""}}
    )
    cfg.run_dir = str(tmp_path)
    cfg.line_key = KEY.hex()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("inproc://pub")
    yield Collector(cfg), pub
    pub.close(0)
    ctx.term()


def stats(epoch: int, captured: int, pending_from: int, **more: object) -> list[zmq.Frame]:
    return sealed(
        {"t": "stats", "cam": "a", "epoch": epoch, "captured": captured, "pending_from": pending_from, **more}
    )


def router(epoch: int, holding: list[int], camera_epoch: int = 1) -> list[zmq.Frame]:
    return sealed(
        {"t": "router_stats", "router_epoch": epoch, "holding": {"a": {str(camera_epoch): holding}}}
    )


def result(seq: int, epoch: int = 1) -> list[zmq.Frame]:
    tag = protocol.frame_tag(KEY, "a", epoch, seq)
    header = {"t": "result", "cam": "a", "epoch": epoch, "seq": seq, "ts": time.time(), "decision": "PASS"}
    return frame({**header, "tag": tag})


def test_a_router_restart_counts_only_the_frames_nobody_holds(collector) -> None:
    col, pub = collector
    col.on_message(router(100, []), pub)
    col.on_message(stats(1, 10, 8), pub)  # seqs 8, 9 still wait in the camera
    for seq in (0, 1, 2):
        col.on_message(result(seq), pub)
    col.on_message(router(200, [5]), pub)  # a new router: a worker told it that it holds #5
    col.run_sweeps()
    led = col.ledger.cameras["a"]
    assert dict(led.dropped) == {"router_lost": 4}  # 3, 4, 6, 7: not decided, held or pending
    assert col.ledger.unaccounted("a", 1) == [5, 8, 9]
    col.on_message(result(4), pub)  # it was only late
    assert led.late == 1 and dict(led.dropped) == {"router_lost": 3}


def test_a_camera_restart_counts_what_the_old_process_held(collector) -> None:
    col, pub = collector
    col.on_message(router(100, []), pub)
    col.on_message(stats(1, 6, 4), pub)
    col.on_message(result(0), pub)
    col.on_message(stats(2, 1, 1), pub)  # a new epoch, and the old one never said goodbye
    col.on_message(router(100, [2], camera_epoch=1), pub)
    col.run_sweeps()
    assert dict(col.ledger.cameras["a"].dropped) == {"camera_lost": 4}  # 1, 3, 4, 5; #2 is with a worker
    assert col.ledger.unaccounted("a", 2) == [0]  # the new process is not touched


def test_a_restarted_collector_carries_on_with_the_saved_books(collector) -> None:
    col, pub = collector
    col.on_message(router(100, []), pub)
    col.on_message(stats(1, 5, 5), pub)
    col.on_message(result(0), pub)
    col.flush_log(force=True)  # saves the books with the (empty) log
    col.on_message(result(1), pub)  # decided, published, but not saved: lost with the process
    again = Collector(col.cfg)
    assert again.ledger.cameras["a"].decided == 1
    again.on_message(router(100, []), pub)
    again.on_message(stats(1, 5, 5), pub)
    again.run_sweeps()
    assert dict(again.ledger.cameras["a"].dropped) == {"collector_lost": 4}
    assert again.ledger.totals()["in_flight"] == 0


def test_an_empty_mask_sent_as_a_flag_is_published_as_its_zero_bytes(collector) -> None:
    """The worker leaves out an all-background mask (``mask_empty``); subscribers still get the
    raw mask of the public protocol. A flagged mask that came with bytes anyway is refused."""
    col, pub = collector
    sub = pub.context.socket(zmq.SUB)
    sub.subscribe(b"result.")
    sub.connect("inproc://pub")
    try:
        time.sleep(0.1)  # the subscription reaches the PUB socket
        flagged = protocol.frame_tag(KEY, "a", 1, 0)
        header = {"t": "result", "cam": "a", "epoch": 1, "seq": 0, "ts": time.time(), "decision": "PASS"}
        col.on_message(frame({**header, "tag": flagged, "mask_shape": [4, 6], "mask_empty": True}), pub)
        assert sub.poll(2000), "no result was published"
        topic, out, mask = sub.recv_multipart()
        published = json.loads(out)
        assert (topic, mask, published["mask_shape"]) == (b"result.a", bytes(24), [4, 6])
        assert "mask_empty" not in published  # the public header is unchanged
        both = {**header, "seq": 1, "tag": protocol.frame_tag(KEY, "a", 1, 1), "mask_empty": True}
        col.on_message([*frame({**both, "mask_shape": [4, 6]}), zmq.Frame(bytes(24))], pub)
        no_shape = {**header, "seq": 2, "tag": protocol.frame_tag(KEY, "a", 1, 2), "mask_empty": True}
        col.on_message(frame(no_shape), pub)
        assert col.rejected.counts["malformed"] == 2
        assert col.ledger.cameras["a"].decided == 1
    finally:
        sub.close(0)
