"""The daemon's parts one at a time: ledger, decisions, protocol, router, worker batching.

The router and the worker run in-process here on real ZeroMQ inproc sockets.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge import protocol
from edge.accounting import Ledger
from edge.config import parse_config
from edge.postprocess import FAIL, NO_DECISION, PASS, DecisionRules, decide, merge_tiles


# -- ledger -----------------------------------------------------------------------------
def test_ledger_counts_each_frame_once_across_epochs() -> None:
    led = Ledger()
    led.captured("a", 1, 5)
    assert led.decided("a", 1, 0, PASS)
    assert led.dropped("a", 1, 1, "superseded")
    assert not led.dropped("a", 1, 0, "worker_lost")  # decided already: a duplicate, not a drop
    assert led.decided("a", 2, 0, FAIL)  # a restarted camera's seq 0 is a new frame
    t = led.totals()
    assert t["captured"] == 6  # 5 of epoch 1, 1 seen of epoch 2
    assert (t["decided"], t["dropped"], t["in_flight"], t["duplicates"]) == (2, 1, 3, 1)
    assert t["captured"] == t["decided"] + t["dropped"] + t["in_flight"]


# -- decisions ----------------------------------------------------------------------------
def prob_map(spots: list[tuple[int, int, int]], size: int = 64) -> np.ndarray:
    p = np.zeros((size, size), np.float32)
    for y, x, r in spots:
        p[y - r : y + r, x - r : x + r] = 0.9
    return p


def test_decide_threshold_area_and_rules() -> None:
    rules = DecisionRules(threshold=0.5, min_defect_area=16)
    assert decide(np.zeros((64, 64), np.float32), rules).decision == PASS
    small = decide(prob_map([(10, 10, 1)]), rules)  # 4 px < 16: noise
    assert small.decision == PASS and small.defect_count == 0
    d = decide(prob_map([(10, 10, 4), (40, 40, 3)]), rules)
    assert (d.decision, d.defect_count, d.defect_area) == (FAIL, 2, 64 + 36)
    assert sorted(d.boxes) == [[6, 6, 8, 8], [37, 37, 6, 6]]
    assert int((d.mask > 0).sum()) == 100
    tolerant = DecisionRules(threshold=0.5, min_defect_area=16, max_defect_area=200, max_defect_count=2)
    assert decide(prob_map([(10, 10, 4), (40, 40, 3)]), tolerant).decision == PASS
    ignore = np.full((64, 64), 255, np.uint8)
    ignore[:20, :20] = 0
    masked = DecisionRules(threshold=0.5, min_defect_area=16, ignore_mask=ignore)
    assert decide(prob_map([(10, 10, 4)]), masked).decision == PASS


def test_nan_output_is_no_decision_never_pass() -> None:
    p = np.zeros((64, 64), np.float32)
    p[3, 3] = np.nan
    d = decide(p, DecisionRules())
    assert d.decision == NO_DECISION and "NaN" in d.reason


def test_tiles_merge_into_one_decision() -> None:
    rules = DecisionRules(threshold=0.5, min_defect_area=4)
    tiles = [decide(np.zeros((32, 32), np.float32), rules), decide(prob_map([(8, 8, 2)], 32), rules)]
    merged = merge_tiles(tiles, [(0, 0), (0, 32)])
    assert merged.decision == FAIL and merged.boxes == [[38, 6, 4, 4]]
    nan = np.full((32, 32), np.nan, np.float32)
    assert merge_tiles([tiles[1], decide(nan, rules)], [(0, 0), (0, 32)]).decision == NO_DECISION


# -- protocol -----------------------------------------------------------------------------
def test_frame_round_trip_and_validation() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    header = protocol.frame_header("a", 7, 1.0, image, sent_ts=2.0, epoch=9)
    decoded = protocol.decode(protocol.encode_header(header), protocol.FROM_CAMERAS)
    assert np.array_equal(protocol.image_from_frame(decoded, image.tobytes()), image)
    with pytest.raises(protocol.ProtocolError, match="buffer has 11 bytes"):
        protocol.image_from_frame(decoded, image.tobytes()[:-1])
    with pytest.raises(protocol.ProtocolError, match="not allowed"):
        protocol.image_from_frame({**decoded, "dtype": "object"}, b"")
    with pytest.raises(protocol.ProtocolError, match="bad shape"):
        protocol.image_from_frame({**decoded, "shape": [10**5, 10**5]}, b"")
    with pytest.raises(protocol.ProtocolError, match="malformed header"):
        protocol.decode(b"\xff", protocol.FROM_CAMERAS)


# -- router -------------------------------------------------------------------------------
#: the line key these in-process parts share (the supervisor makes one per run)
KEY = "5a" * 32


def cfg_for(package: Path | None = None, **workers: object) -> object:
    data = {
        "model": {"package": str(package or "pkg"), "backend": "onnxruntime", "threads": 1},
        "cameras": [{"id": cam} for cam in ("a", "live", "trig", "strip")],
        "workers": workers,
        "metrics": {"port": 0},
    }
    cfg = parse_config(data)
    cfg.workers.heartbeat_timeout_s = 0.3  # the test plays the worker: no need to wait 1.5 s
    cfg.line_key = KEY
    return cfg


def frame_parts(cam: str, seq: int, policy: str, size: int = 8) -> list[bytes]:
    image = np.full((size, size), 100, np.uint8)
    header = protocol.frame_header(
        cam, seq, time.time(), image, sent_ts=time.time(), policy=policy, epoch=1, key=bytes.fromhex(KEY)
    )
    return [protocol.encode_header(header), image.tobytes()]


def from_camera(cam: str, parts: list[bytes]) -> list[zmq.Frame]:
    """A camera's message as the router's frames socket receives it: its routing id first."""
    return [Msg(f"id-{cam}".encode()), *(Msg(p) for p in parts)]


def Msg(data: bytes) -> zmq.Frame:
    """A message frame as recv_multipart(copy=False) gives it."""
    return zmq.Frame(data)


def drain(sock: zmq.Socket) -> list[dict]:
    out = []
    while sock.poll(50):
        out.append(json.loads(sock.recv_multipart()[0]))
    return out


def test_router_policies_credits_and_lost_worker() -> None:
    from edge.router import Router

    ctx = zmq.Context()
    work = ctx.socket(zmq.ROUTER)
    work.bind("inproc://work")
    results_in = ctx.socket(zmq.PULL)
    results_in.bind("inproc://results")
    results = ctx.socket(zmq.PUSH)
    results.connect("inproc://results")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"w1")
    dealer.connect("inproc://work")
    try:
        router = Router(cfg_for())
        for seq in range(3):  # latest: only the freshest frame stays queued
            router.on_frame(from_camera("live", frame_parts("live", seq, "latest")))
        for seq in range(3):  # lossless: all stay
            router.on_frame(from_camera("trig", frame_parts("trig", seq, "lossless")))
        assert router.stats_header()["queues"] == {"live": 1, "trig": 3}
        router.on_frame([Msg(b"id-x"), Msg(b"not json")])
        assert router.rejected.count == 1

        dealer.send(protocol.encode_header({"t": "ready", "worker": "w1", "credits": 2}))
        ident, raw = work.recv_multipart()
        router.on_worker([Msg(ident), Msg(raw)], work)
        assert json.loads(dealer.recv_multipart()[0]) == {"t": "welcome"}  # a line is here
        router.dispatch(work)
        got = [json.loads(dealer.recv_multipart()[0]) for _ in range(2)]
        assert not dealer.poll(100), "the router sent more frames than the worker asked for"
        assert sorted((g["cam"], g["seq"]) for g in got) == [("live", 2), ("trig", 0)]

        time.sleep(0.4)  # past the heartbeat timeout: the worker is declared lost
        router.check_workers()
        router.flush_drops(results)
        drops = drain(results_in)
        lost = sorted((d["cam"], s) for d in drops if d["reason"] == "worker_lost" for s in d["seqs"])
        superseded = sorted(s for d in drops if d["reason"] == "superseded" for s in d["seqs"])
        assert lost == [("live", 2), ("trig", 0)]
        assert superseded == [0, 1]
    finally:
        for s in (work, results_in, results, dealer):
            s.close(0)
        ctx.term()


# -- worker batching -------------------------------------------------------------------------
@pytest.fixture
def worker_sockets(trained_package: Path):
    """A worker on the session model, its results socket and a PULL to read them (inproc)."""
    from edge.worker import open_worker

    worker = open_worker(cfg_for(trained_package, max_batch=8, max_wait_ms=150), "w-test")
    ctx = zmq.Context()
    results_in = ctx.socket(zmq.PULL)
    results_in.bind("inproc://results")
    results = ctx.socket(zmq.PUSH)
    results.connect("inproc://results")
    yield worker, ctx, results, results_in
    worker.close()
    results_in.close(0)
    results.close(0)
    ctx.term()


@pytest.fixture
def worker_loop(worker_sockets):
    """The worker's real loop in a thread, talking to a ROUTER socket the test plays."""
    import threading

    worker, ctx, results, results_in = worker_sockets
    router = ctx.socket(zmq.ROUTER)
    router.bind("inproc://work")
    work = ctx.socket(zmq.DEALER)
    work.setsockopt(zmq.IDENTITY, b"w-test")
    work.connect("inproc://work")
    loop = threading.Thread(target=worker.run, args=(work, results), daemon=True)
    yield worker, router, loop, results_in
    worker.stop.set()
    if loop.is_alive():
        loop.join(10)
    router.close(0)
    work.close(0)


def test_worker_sends_a_partial_batch_when_its_deadline_passes(worker_loop) -> None:
    """One frame and no more (the other cameras are dead): the batch of 8 goes out after
    max_wait_ms with that one frame, in the worker's real loop."""
    worker, router, loop, results_in = worker_loop
    loop.start()
    ident, ready = router.recv_multipart()
    assert json.loads(ready) == {
        "t": "ready",
        "worker": "w-test",
        "credits": 16,
        "credits_open": 16,
        "done": [],
    }
    size = worker.hw[0]
    sent = time.monotonic()
    router.send_multipart([ident, *frame_parts("a", 0, "lossless", size)])
    assert results_in.poll(10_000), "a lone frame was never decided"
    waited = time.monotonic() - sent
    parts = results_in.recv_multipart()
    header = json.loads(parts[0])
    assert header["t"] == "result" and (header["cam"], header["epoch"], header["seq"]) == ("a", 1, 0)
    assert header["decision"] in (PASS, FAIL)
    assert len(parts[1]) == size * size  # the mask travels with the result
    assert waited >= worker.max_wait  # it did wait for more frames ...
    assert waited < worker.max_wait + 3.0  # ... but not for a full batch
    worker.stop.set()
    loop.join(10)
    kinds = [json.loads(router.recv_multipart()[1]) for _ in range(2) if router.poll(2000)]
    assert kinds[-1]["t"] == "bye"
    done = [d for k in kinds for d in k["done"]]
    assert done == [["a", 1, 0]]  # the router learns the frame is finished


def test_a_frame_larger_than_the_model_is_tiled_and_joined(worker_sockets) -> None:
    """A strip wider than the model input becomes tiles; their results join into one decision."""
    worker, _, results, results_in = worker_sockets
    h, w = worker.hw
    strip = np.full((h, 3 * w + w // 2), 128, np.uint8)  # 3.5 model widths: 4 tiles, one overlapping
    header = protocol.frame_header("strip", 0, time.time(), strip, sent_ts=time.time(), epoch=1)
    worker.on_frame([Msg(protocol.encode_header(header)), Msg(strip.tobytes())], results)
    worker.process(results)
    parts = results_in.recv_multipart()
    result = json.loads(parts[0])
    assert not results_in.poll(100), "a tiled frame must give exactly one result"
    assert result["mask_shape"] == [h, strip.shape[1]]
    assert len(parts[1]) == strip.size
    assert result["decision"] in (PASS, FAIL, NO_DECISION)
    narrow = np.zeros((h // 2, w // 2), np.uint8)  # smaller than the model: refused, not guessed
    header = protocol.frame_header("strip", 1, time.time(), narrow, sent_ts=time.time(), epoch=1)
    worker.on_frame([Msg(protocol.encode_header(header)), Msg(narrow.tobytes())], results)
    worker.process(results)
    refused = json.loads(results_in.recv_multipart()[0])
    assert refused["decision"] == NO_DECISION and "wrong shape" in refused["reason"]


def test_router_drops_frames_older_than_their_max_age() -> None:
    from edge.router import Router

    ctx = zmq.Context()
    work = ctx.socket(zmq.ROUTER)
    work.bind("inproc://work-age")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"w1")
    dealer.connect("inproc://work-age")
    results_in = ctx.socket(zmq.PULL)
    results_in.bind("inproc://results-age")
    results = ctx.socket(zmq.PUSH)
    results.connect("inproc://results-age")
    try:
        router = Router(cfg_for())
        image = np.zeros((8, 8), np.uint8)
        key = bytes.fromhex(KEY)
        stale = protocol.frame_header(
            "a", 0, time.time() - 5, image, sent_ts=0, max_age_ms=500, epoch=1, key=key
        )
        fresh = protocol.frame_header("a", 1, time.time(), image, sent_ts=0, max_age_ms=500, epoch=1, key=key)
        for header in (stale, fresh):
            header["policy"] = "lossless"
            router.on_frame(from_camera("a", [protocol.encode_header(header), image.tobytes()]))
        dealer.send(protocol.encode_header({"t": "ready", "worker": "w1", "credits": 4}))
        ident, raw = work.recv_multipart()
        router.on_worker([Msg(ident), Msg(raw)], work)
        assert json.loads(dealer.recv_multipart()[0]) == {"t": "welcome"}
        router.dispatch(work)
        router.flush_drops(results)
        got = json.loads(dealer.recv_multipart()[0])
        assert got["seq"] == 1 and not dealer.poll(100)  # only the fresh frame costs an inference
        drops = drain(results_in)
        assert [(d["reason"], d["seqs"]) for d in drops] == [("too_old", [0])]
    finally:
        for s in (work, dealer, results_in, results):
            s.close(0)
        ctx.term()


@pytest.mark.parametrize("overlap", [False, True], ids=["in-turn", "overlapped"])
def test_worker_loop_decides_every_frame(worker_loop, overlap: bool) -> None:
    """Both loop modes (host work in turn with the model, or beside it as on a GPU) decide
    every frame once, and acknowledge each to the router."""
    worker, router, loop, results_in = worker_loop
    worker.backend.overlaps_host_work = overlap  # the GPU path, exercised with ONNX Runtime
    loop.start()
    ident, _ = router.recv_multipart()
    size = worker.hw[0]
    done = []
    for seq in range(20):  # more than the 16 credits: the worker must ask for more
        if seq == 16:
            assert router.poll(10_000)
            message = json.loads(router.recv_multipart()[1])
            assert message["t"] in ("ready", "heartbeat")
            done += message["done"]
        router.send_multipart([ident, *frame_parts("a", seq, "lossless", size)])
    seqs = []
    while len(seqs) < 20 and results_in.poll(10_000):
        seqs.append(json.loads(results_in.recv_multipart()[0])["seq"])
    assert sorted(seqs) == list(range(20))
    worker.stop.set()
    loop.join(10)
    while router.poll(500):
        done += json.loads(router.recv_multipart()[1])["done"]
    assert sorted(seq for _, _, seq in done) == list(range(20))
