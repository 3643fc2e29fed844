"""Hostile input: no message crashes a process, and no stranger enters the ledger.

Two levels. Property-based cases (hypothesis) go straight at the decoders and at the
router's and collector's handlers, in process: whatever the bytes, a decoder returns
checked values or raises ``ProtocolError``, and a handler never raises (the last-resort
guard of each socket loop is never needed). Then a running line gets the crafted messages
that once crashed a process or fooled the ledger, plus random ones, on its frames, work
and results sockets: nothing restarts, the line keeps deciding, and the books change only
in the rejection counters.

A fake *worker* is not among them: on loopback or IPC a process of this box may be a
worker by design; on the network CURVE keys decide who may be one (tests/edge/test_security.py).
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import protocol
from edge.collector import Collector
from edge.config import parse_config
from edge.router import Router
from tests.conftest import MODEL_SIZE
from tests.edge.daemon import check_ledger, finish, line_config, start_line, synthetic_camera

KEY = bytes(range(32))
KINDS = [cls.__struct_config__.tag for cls in protocol.MESSAGE_TYPES] + ["bogus"]
#: every field any message has: random messages use real names, so they get past the kind check
FIELDS = sorted({f for cls in protocol.MESSAGE_TYPES for f in cls.__struct_fields__})
DECODERS = [
    protocol.FROM_CAMERAS,
    protocol.FROM_ROUTER_TO_CAMERA,
    protocol.FROM_WORKERS,
    protocol.FROM_ROUTER_TO_WORKER,
    protocol.TO_COLLECTOR,
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["a", "cam1", "PASS", "FAIL", "lossless", "uint8", ""])
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
messages = st.builds(
    lambda kind, fields: {**fields, "t": kind},
    st.sampled_from(KINDS),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=10),
)


def sign(msg: dict) -> list[bytes]:
    """The message as the line's own processes would send it: tagged and sealed with KEY
    where its fields allow (so handlers see schema-valid, authentic, but odd values)."""
    cam, epoch, seq = msg.get("cam"), msg.get("epoch", 0), msg.get("seq")
    if isinstance(cam, str) and type(epoch) is int:
        if type(seq) is int:
            msg["tag"] = protocol.frame_tag(KEY, cam, epoch, seq)
        if isinstance(msg.get("seqs"), list):
            msg["tags"] = [
                protocol.frame_tag(KEY, cam, epoch, s) if type(s) is int else "" for s in msg["seqs"]
            ]
    raw = json.dumps(msg).encode()
    return protocol.seal(KEY, msg) if msg["t"] in protocol.SEALED_KINDS else [raw]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200) | messages.map(lambda m: json.dumps(m).encode()))
def test_a_decoder_returns_checked_values_or_refuses(raw: bytes) -> None:
    for decoder in DECODERS:
        try:
            out = protocol.decode(raw, decoder)
        except protocol.ProtocolError:
            continue
        assert isinstance(out, dict) and out["t"] in KINDS
        # Whatever got through is finite and typed: it encodes back as strict JSON.
        json.dumps(out, allow_nan=False)


@pytest.fixture(scope="module")
def parts_in_process():
    cfg = parse_config(
        {"cameras": [{"id": "a", "policy": "lossless"}], "sinks": {"decision_log": "", "ng_store": ""}}
    )
    cfg.line_key = KEY.hex()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("inproc://hostile-pub")
    work = ctx.socket(zmq.ROUTER)
    work.bind("inproc://hostile-work")
    yield cfg, pub, work
    pub.close(0)
    work.close(0)
    ctx.term()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(messages, st.booleans(), st.binary(max_size=64)), min_size=1, max_size=8))
def test_no_message_makes_a_handler_raise(parts_in_process, batch) -> None:
    """Random messages, some tagged and sealed as if from the line itself, straight into the
    router's and the collector's handlers (not through the guard): none may raise."""
    cfg, pub, work = parts_in_process
    router, collector = Router(cfg), Collector(cfg)
    for msg, authentic, extra in batch:
        parts = sign(msg) if authentic else [json.dumps(msg).encode()]
        frames = [zmq.Frame(p) for p in parts]
        router.on_frame([zmq.Frame(b"cam-id"), frames[0], zmq.Frame(parts[1] if len(parts) > 1 else extra)])
        router.on_worker([zmq.Frame(b"w"), frames[0]], work)
        collector.on_message(frames + [zmq.Frame(extra)] * (not authentic), pub)
    assert router.rejected.counts["internal"] == router.rejected_work.counts["internal"] == 0
    assert collector.rejected.counts["internal"] == 0
    for cam, led in collector.ledger.snapshot().items():
        assert cam == "a"  # the only camera of this line
        assert led["captured"] == led["decided"] + led["dropped"] + led["in_flight"]


@pytest.fixture(scope="module")
def worker_in_process(line_package: Path):
    from edge.worker import open_worker

    model = {"package": str(line_package), "backend": "onnxruntime", "threads": 1}
    cfg = parse_config({"model": model, "cameras": [{"id": "a"}]})
    worker = open_worker(cfg, "w-hostile")
    ctx = zmq.Context()
    results_in = ctx.socket(zmq.PULL)
    results_in.bind("inproc://hostile-results")
    results = ctx.socket(zmq.PUSH)
    results.connect("inproc://hostile-results")
    yield worker, results, results_in
    worker.close()
    results.close(0)
    results_in.close(0)
    ctx.term()


def near_frame(changes: dict, drop: list[str], fits: bool) -> tuple[dict, bytes]:
    """A good frame of MODEL_SIZE pixels with some fields changed or left out, and pixels
    that fit its shape when they can (so the worker's own checks and its model are reached)."""
    msg = {"t": "frame", "cam": "a", "seq": 1, "ts": time.time(), "shape": [MODEL_SIZE, MODEL_SIZE]}
    msg |= {"dtype": "uint8", "tag": "", "max_age_ms": 0}
    msg |= changes
    for name in drop:
        msg.pop(name, None)
    shape = msg.get("shape")
    usable = isinstance(shape, list) and all(type(v) is int and 0 < v <= 2 * MODEL_SIZE for v in shape)
    sides = shape if usable else [1]
    n = 1
    for side in sides:
        n *= side
    return msg, bytes(n if fits and n < 2**24 else 3)


frame_fields = st.sampled_from(sorted(protocol.Frame.__struct_fields__))
near_frames = st.builds(
    near_frame,
    st.dictionaries(frame_fields, json_values, max_size=3),
    st.lists(frame_fields, max_size=2),
    st.booleans(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(near_frames | st.tuples(messages, st.binary(max_size=64)), min_size=1, max_size=6))
def test_no_frame_message_makes_a_worker_raise(worker_in_process, batch) -> None:
    """What the router hands a worker, made random (a shape of Infinity, a frame without a
    ts, pixels that do not fit): the worker refuses or decides, and never raises."""
    worker, results, results_in = worker_in_process
    before = worker.rejected.counts["internal"]
    for msg, pixels in batch:
        worker.on_frame([zmq.Frame(json.dumps(msg).encode()), zmq.Frame(pixels)], results)
    worker.process(results)
    assert worker.rejected.counts["internal"] == before
    while results_in.poll(0):
        results_in.recv_multipart()


def test_forged_reports_never_enter_the_ledger_in_process(parts_in_process) -> None:
    """Schema-valid results, drops and stats without this line's tag or seal: refused and
    counted as unauthenticated; the ledger stays empty and nothing is published."""
    cfg, pub, _ = parts_in_process
    collector = Collector(cfg)
    other = bytes(32)  # another line's key
    forged = [
        {"t": "result", "cam": "a", "seq": 10**9, "ts": 1.0, "decision": "PASS", "tag": "00" * 16},
        {
            "t": "result",
            "cam": "a",
            "seq": 3,
            "ts": 1.0,
            "decision": "PASS",
            "tag": protocol.frame_tag(other, "a", 0, 3),
        },
        {"t": "drop", "cam": "a", "seqs": [10**12], "tags": ["x"], "reason": "too_old"},
    ]
    for msg in forged:
        collector.on_message([zmq.Frame(json.dumps(msg).encode())], pub)
    stats = {"t": "stats", "cam": "a", "epoch": 1, "captured": 2_978_931}
    collector.on_message([zmq.Frame(json.dumps(stats).encode())], pub)  # not sealed
    collector.on_message([zmq.Frame(p) for p in protocol.seal(other, stats)], pub)  # sealed by another
    assert collector.ledger.totals()["captured"] == 0
    assert collector.rejected.counts["unauthenticated"] == 5
    # The same stats sealed by this line are taken.
    collector.on_message([zmq.Frame(p) for p in protocol.seal(KEY, stats)], pub)
    assert collector.ledger.totals()["captured"] == 2_978_931


# -- a running line under attack --------------------------------------------------------------
def crafted(real_cam: str) -> dict[str, list[list[bytes]]]:
    """The messages that once crashed a process or fooled the ledger, by target socket."""
    frame = {"t": "frame", "cam": real_cam, "seq": 5, "ts": time.time(), "shape": [MODEL_SIZE, MODEL_SIZE]}
    frame |= {"dtype": "uint8", "policy": "lossless", "tag": "0" * 32}
    pixels = bytes(MODEL_SIZE * MODEL_SIZE)
    result = {"t": "result", "cam": real_cam, "seq": 10**9, "ts": time.time(), "decision": "PASS"}
    deep = [b"[" * 100_000]

    def enc(msg: dict) -> bytes:
        return json.dumps(msg).encode()  # json writes Infinity and NaN: exactly what an attacker can

    return {
        "frames": [
            deep,
            [enc({**frame, "ts": "yesterday"}), pixels],
            [enc({**frame, "max_age_ms": "x"}), pixels],
            [enc({**frame, "shape": [float("inf"), 128]}), pixels],
            [enc({k: v for k, v in frame.items() if k != "ts"}), pixels],
            [enc(frame), pixels],  # a well-formed frame without this line's tag
            [enc({**frame, "cam": "stranger"}), pixels],
            [
                enc({"t": "hello", "cam": real_cam, "policy": "lossless"}),
                b"0" * 32,
            ],  # a seal not of this line
            [enc(frame)],  # parts missing
            [b"\xff\xfe not json", b"", b"", b""],
        ],
        "work": [
            deep,
            [enc({"t": "ready", "worker": "x", "credits": "abc"})],
            [enc({"t": "ready", "worker": "x", "done": 5})],
            [enc({"t": "ready", "worker": "x", "done": [[["unhashable"], 1, 2]]})],
            [enc({"t": "heartbeat", "worker": "x", "holding": [[real_cam, 0, 1]]})],
            [enc({"t": "bye", "worker": 7})],
        ],
        "results": [
            deep,
            [enc({**result, "cam": 5})],
            [enc({**result, "seq": float("inf")})],
            [enc({"t": "stats", "cam": real_cam, "epoch": 1, "captured": float("inf")})],
            [enc({"t": "drop", "cam": real_cam, "seqs": [float("inf")], "tags": [""], "reason": "x"})],
            [enc({**result, "tag": "0" * 32})],  # a forged PASS
            [enc({**result, "seq": 1, "tag": "0" * 32}), b"\x00" * 4],
            [enc({"t": "stats", "cam": real_cam, "epoch": 1, "captured": 2_978_931})],  # the inflater
            [
                enc(
                    {
                        "t": "drop",
                        "cam": real_cam,
                        "seqs": list(range(1000)),
                        "tags": ["0"] * 1000,
                        "reason": "x",
                    }
                )
            ],
            [enc({"t": "supervisor", "restarts": {"router": 99}})],
            [enc({**result, "cam": "stranger", "tag": ""})],
        ],
    }


def random_messages(rng: random.Random, n: int) -> list[list[bytes]]:
    """Random bytes, random part counts and random JSON with the protocol's kinds and fields."""
    values = [
        None,
        True,
        0,
        -1,
        2**64,
        1.5,
        float("inf"),
        float("nan"),
        "",
        "cam1",
        [],
        {},
        [1, [2]],
        {"a": 1},
    ]
    out = []
    for _ in range(n):
        if rng.random() < 0.3:
            parts = [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 5))]
        else:
            msg = {"t": rng.choice(KINDS)}
            for field in rng.sample(FIELDS, rng.randrange(0, 8)):
                msg[field] = rng.choice(values)
            parts = [json.dumps(msg).encode()] + [rng.randbytes(8) for _ in range(rng.randrange(0, 3))]
        out.append(parts)
    return out


def rejected_lines(out: str) -> int:
    return len(re.findall(r"message on the \w+ socket rejected", out))


@pytest.mark.slow
def test_a_line_under_attack_keeps_deciding_and_its_books_stay_whole(
    line_package: Path, tmp_path: Path
) -> None:
    cam = synthetic_camera("cam1", size=MODEL_SIZE, fps=10, seed=61)
    cfg = line_config(tmp_path, line_package, [cam], status_interval_s=2)
    daemon, sub = start_line(tmp_path, cfg)
    ctx = zmq.Context()
    socks = {
        "frames": ctx.socket(zmq.DEALER),
        "work": ctx.socket(zmq.DEALER),
        "results": ctx.socket(zmq.PUSH),
    }
    rng = random.Random(12)
    started = time.time()
    try:
        assert sub.wait_for(lambda s: len(s.results) >= 5, 60), daemon.output()
        for name, sock in socks.items():
            sock.setsockopt(zmq.LINGER, 2000)
            sock.connect(cfg["endpoints"][name])
        sent = 0
        attack = crafted("cam1")
        for name, batch in attack.items():
            for parts in batch + random_messages(rng, 170):
                if name == "work" and len(parts) == 1:
                    # A well-formed ready would make this socket a worker (allowed on loopback).
                    try:
                        protocol.decode(parts[0], protocol.FROM_WORKERS)
                        continue
                    except protocol.ProtocolError:
                        pass
                socks[name].send_multipart(parts)
                sent += 1
        before = len(sub.results)
        assert sub.wait_for(lambda s: len(s.results) >= before + 20, 30), daemon.output()
    finally:
        for sock in socks.values():
            sock.close()
        ctx.term()
        daemon.terminate()
    assert finish(daemon, sub) == 0, daemon.output()
    elapsed = time.time() - started
    out = daemon.output()
    summary = daemon.summary()
    print(f"{sent} hostile messages; rejected {summary['rejected']}; {rejected_lines(out)} log lines")
    assert summary["restarts"] == {}, "no message may crash a process"
    assert "Traceback" not in out
    check_ledger(summary)
    # Only the real camera is in the books, with no more frames than it can have made.
    assert set(summary["cameras"]) == {"cam1"}, summary["cameras"]
    assert summary["totals"]["captured"] <= 10 * elapsed + 10, (summary["totals"], elapsed)
    assert summary["totals"]["dropped_by_reason"] == {}, summary["totals"]
    rejected = summary["rejected"]
    assert all(counts.get("internal", 0) == 0 for counts in rejected.values()), rejected
    for sock in ("frames", "work", "results"):
        assert rejected[sock]["malformed"] > 0, rejected
    assert rejected["results"]["unauthenticated"] >= 5, rejected  # forged results, stats, drops
    assert rejected["frames"]["unauthenticated"] >= 2, rejected  # a frame and a hello without the line's
    assert rejected["results"]["unknown"] >= 1 and rejected["frames"]["unknown"] >= 1, rejected
    # No forged decision reached a subscriber or the log.
    with sqlite3.connect(cfg["sinks"]["decision_log"]) as db:
        logged = db.execute("SELECT camera_id, seq FROM decisions").fetchall()
    assert len(logged) == summary["totals"]["decided"]
    captured = summary["totals"]["captured"]
    assert all(seq < captured for _, seq in logged)
    assert all(r["seq"] < captured and r["cam"] == "cam1" for r in sub.results)
    # Rejections are logged at a bounded rate: a few per socket, then one line per 10 s
    # (the router's two sockets, the collector's and the worker's).
    assert rejected_lines(out) <= 4 * (5 + elapsed / 10 + 1), rejected_lines(out)
