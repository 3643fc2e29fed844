"""The daemon's parts one at a time: ledger, decisions, protocol, router, worker batching.

The router and the worker run in-process here on real ZeroMQ inproc sockets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from edge import protocol
from edge.accounting import Ledger
from edge.config import DecisionConfig, parse_config
from edge.postprocess import FAIL, NO_DECISION, PASS, decide, merge_tiles


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


#: the rules of the decision tests: a region counts from 16 px, any defect fails
RULES = DecisionConfig(threshold=0.5, min_defect_area=16)
#: two square spots, 8x8 at (10, 10) and 6x6 at (40, 40): 64 + 36 px
TWO_SPOTS = [(10, 10, 4), (40, 40, 3)]


def test_decide_passes_a_map_without_defects() -> None:
    d = decide(np.zeros((64, 64), np.float32), RULES)
    assert (d.decision, d.reason, d.defect_count, d.boxes) == (PASS, "no defect", 0, [])


def test_decide_ignores_regions_smaller_than_min_defect_area() -> None:
    small = decide(prob_map([(10, 10, 1)]), RULES)  # 4 px < 16: noise
    assert (small.decision, small.defect_count, small.defect_area) == (PASS, 0, 0)
    assert not small.mask.any() and small.empty


def test_decide_flags_an_all_background_mask_and_only_that() -> None:
    """``empty`` lets the worker send a flag instead of the mask: it must never hide a defect."""
    clean = decide(np.full((64, 64), 0.5, np.float32), RULES)  # at the threshold, not above it
    assert (clean.decision, clean.empty, clean.mask.shape) == (PASS, True, (64, 64))
    assert not clean.mask.any()
    failed = decide(prob_map(TWO_SPOTS), RULES)
    assert failed.decision == FAIL and not failed.empty
    tolerant = DecisionConfig(threshold=0.5, min_defect_area=16, max_defect_area=200, max_defect_count=2)
    within = decide(prob_map(TWO_SPOTS), tolerant)
    assert within.decision == PASS and not within.empty and within.mask.any()


def test_decide_fails_on_defects_with_their_boxes_area_and_mask() -> None:
    d = decide(prob_map(TWO_SPOTS), RULES)
    assert (d.decision, d.defect_count, d.defect_area) == (FAIL, 2, 64 + 36)
    assert sorted(d.boxes) == [[6, 6, 8, 8], [37, 37, 6, 6]]
    assert int((d.mask > 0).sum()) == 100


def test_decide_passes_defects_within_max_area_and_count() -> None:
    tolerant = DecisionConfig(threshold=0.5, min_defect_area=16, max_defect_area=200, max_defect_count=2)
    d = decide(prob_map(TWO_SPOTS), tolerant)
    assert (d.decision, d.reason) == (PASS, "2 defect(s), 100 px within limits")
    one_less = DecisionConfig(threshold=0.5, min_defect_area=16, max_defect_area=200, max_defect_count=1)
    assert decide(prob_map(TWO_SPOTS), one_less).decision == FAIL  # the count limit is a limit


def test_decide_leaves_out_defects_under_the_ignore_mask() -> None:
    ignore = np.full((64, 64), 255, np.uint8)
    ignore[:20, :20] = 0  # covers the first spot, not the second
    assert decide(prob_map([(10, 10, 4)]), RULES, ignore).decision == PASS
    d = decide(prob_map(TWO_SPOTS), RULES, ignore)
    assert (d.decision, d.boxes) == (FAIL, [[37, 37, 6, 6]])


def _halo_map() -> np.ndarray:
    """A 6x6 core at 0.9 inside a 12x12 halo at 0.6 at (10, 10), and a separate 8x8 patch at 0.6
    at (40, 40) that touches no core."""
    p = np.zeros((64, 64), np.float32)
    p[4:16, 4:16] = 0.6
    p[7:13, 7:13] = 0.9
    p[36:44, 36:44] = 0.6
    return p


def test_the_mask_is_drawn_at_the_mask_threshold_and_the_decision_is_not_changed() -> None:
    at_rule = decide(_halo_map(), DecisionConfig(threshold=0.75, min_defect_area=16))
    assert (at_rule.decision, at_rule.defect_area, int((at_rule.mask > 0).sum())) == (FAIL, 36, 36)
    # below the rule's threshold: the core grows to its halo; the patch that touches no kept
    # region is no defect at 0.75 and stays out of the mask at 0.5 too
    grown = decide(_halo_map(), DecisionConfig(threshold=0.75, min_defect_area=16, mask_threshold=0.5))
    assert (grown.decision, grown.defect_area, grown.defect_count, grown.boxes) == (
        FAIL,
        36,
        1,
        at_rule.boxes,
    )
    assert (
        int((grown.mask > 0).sum()) == 144 and grown.mask[8, 8] == 255 and not grown.mask[36:44, 36:44].any()
    )
    # above it: each kept region shrinks to its core
    rules = DecisionConfig(threshold=0.5, min_defect_area=16, mask_threshold=0.75)
    core = decide(_halo_map(), rules)
    assert (core.decision, core.defect_count, core.defect_area) == (FAIL, 2, 144 + 64)
    assert int((core.mask > 0).sum()) == 36
    # the ignore mask holds for the grown mask as for the decision
    ignore = np.full((64, 64), 255, np.uint8)
    ignore[:, :6] = 0
    grown = decide(
        _halo_map(), DecisionConfig(threshold=0.75, min_defect_area=16, mask_threshold=0.5), ignore
    )
    assert int((grown.mask > 0).sum()) == 144 - 2 * 12 and not grown.mask[:, :6].any()
    # nothing kept: nothing drawn, whatever the mask threshold
    small = decide(_halo_map(), DecisionConfig(threshold=0.75, min_defect_area=40, mask_threshold=0.5))
    assert small.decision == PASS and small.empty and not small.mask.any()


def test_the_line_takes_the_manifests_mask_threshold_unless_its_config_says_otherwise() -> None:
    from types import SimpleNamespace

    from converter.manifest import ModelManifest
    from edge.worker import decision_rules

    def rules(manifest_mask: float | None, **decision: Any) -> DecisionConfig:
        manifest = ModelManifest(
            "m", "tiny_unet", threshold=0.95, min_defect_area=600, mask_threshold=manifest_mask
        )
        package = SimpleNamespace(manifest=manifest)
        return decision_rules(SimpleNamespace(decision=DecisionConfig(**decision)), package)

    r = rules(0.5)
    assert (r.threshold, r.min_defect_area, r.mask_threshold) == (0.95, 600, 0.5)
    assert rules(None).mask_threshold == 0.95  # a package before schema 3 draws at its threshold
    assert rules(0.5, mask_threshold=0.85).mask_threshold == 0.85
    # the manifest's mask threshold belongs to the manifest's threshold: another one draws at itself
    assert (rules(0.5, threshold=0.75).threshold, rules(0.5, threshold=0.75).mask_threshold) == (0.75, 0.75)
    assert rules(0.5, threshold=0.95).mask_threshold == 0.5
    assert rules(0.5, min_defect_area=100).mask_threshold == 0.5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_output_is_no_decision_never_pass(bad: float) -> None:
    p = np.zeros((64, 64), np.float32)
    p[3, 3] = bad
    d = decide(p, DecisionConfig(threshold=0.5, min_defect_area=16))
    assert d.decision == NO_DECISION and "NaN" in d.reason


def test_tiles_merge_into_one_decision() -> None:
    rules = DecisionConfig(threshold=0.5, min_defect_area=4)
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


def test_a_frame_of_a_newer_major_protocol_version_is_refused_in_one_line() -> None:
    image = np.zeros((3, 4), np.uint8)
    header = protocol.frame_header("a", 7, 1.0, image, sent_ts=2.0)
    assert protocol.decode(protocol.encode_header(header), protocol.FROM_CAMERAS)["v"] == 1
    header["v"] = protocol.PROTOCOL_VERSION + 1
    with pytest.raises(protocol.NewerProtocolError) as info:
        protocol.decode(protocol.encode_header(header), protocol.FROM_CAMERAS)
    assert str(info.value) == (
        "frame message of protocol version 2, newer than this lineside's 1: "
        "upgrade lineside here to the sender's version"
    )
    assert info.value.why == "version"


def test_admit_counts_why_a_message_is_refused_and_checks_the_seal_before_the_camera() -> None:
    key, other = bytes.fromhex("5a" * 32), bytes(32)
    refused: list[tuple[str, str]] = []

    def admit(raw: bytes, mac: bytes | None = None) -> dict | None:
        return protocol.admit(
            raw, protocol.FROM_CAMERAS, lambda *why: refused.append(why), key=key, mac=mac, cameras={"a"}
        )

    hello = {"t": "hello", "cam": "a", "policy": "lossless"}
    raw, mac = protocol.seal(key, hello)
    assert admit(raw, mac)["policy"] == "lossless"
    frame = protocol.frame_header("b", 7, 1.0, np.zeros((3, 4), np.uint8), sent_ts=2.0, key=key)
    newer = protocol.frame_header("a", 7, 1.0, np.zeros((3, 4), np.uint8), sent_ts=2.0) | {"v": 2}
    for message in (
        (b"not json",),
        (protocol.encode_header(newer),),
        (raw,),  # no seal
        (raw, protocol.seal(other, hello)[1]),  # another line's seal
        protocol.seal(other, {**hello, "cam": "b"}),  # the seal is checked first
        protocol.seal(key, {**hello, "cam": "b"}),
        (protocol.encode_header(frame), b"pixels"),
    ):
        assert admit(*message) is None
    assert [why for _, why in refused] == [
        "malformed",
        "version",
        "unauthenticated",
        "unauthenticated",
        "unauthenticated",
        "unknown",
        "unknown",
    ]
    assert refused[-1][0] == "frame for camera 'b', which this line does not have"
    # a kind that is not sealed needs no seal, and without ``cameras`` any camera is taken
    assert protocol.admit(protocol.encode_header(frame), protocol.FROM_CAMERAS, refused.append) is not None


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
    """The headers of every message waiting on ``sock`` (it stops at 50 ms of quiet)."""
    out = []
    while sock.poll(50):
        out.append(json.loads(sock.recv_multipart()[0]))
    return out


@dataclass
class RouterRig:
    """A router in-process, with the sockets it talks to: ``work`` (its ROUTER), ``worker``
    (a DEALER the test plays as worker ``w1``), ``results`` and ``results_in`` (its drops)."""

    router: Any
    work: zmq.Socket
    worker: zmq.Socket
    results: zmq.Socket
    results_in: zmq.Socket

    def attach_worker(
        self, recv: Callable[..., list[bytes]], credits: int, sock: zmq.Socket | None = None, name: str = "w1"
    ) -> None:
        """Worker ``name`` (on ``sock``, default ``w1``'s) says ready with ``credits``; the router
        welcomes it."""
        sock = self.worker if sock is None else sock
        sock.send(protocol.encode_header({"t": "ready", "worker": name, "credits": credits}))
        ident, raw = recv(self.work, what=f"{name}'s ready")
        self.router.on_worker([Msg(ident), Msg(raw)], self.work)
        assert json.loads(recv(sock, what=f"the router's welcome to {name}")[0]) == {"t": "welcome"}

    def drops(self) -> list[dict]:
        """The drop reports the router has sent so far."""
        self.router.flush_drops(self.results)
        return drain(self.results_in)


@pytest.fixture
def rig(socket: Callable[..., zmq.Socket]) -> RouterRig:
    """A router on the four cameras of ``cfg_for``, its sockets from the ``socket`` fixture."""
    from edge.router import Router

    work = socket(zmq.ROUTER)
    work.bind("inproc://work")
    worker = socket(zmq.DEALER, identity=b"w1")
    worker.connect("inproc://work")
    results_in = socket(zmq.PULL)
    results_in.bind("inproc://results")
    results = socket(zmq.PUSH)
    results.connect("inproc://results")
    return RouterRig(Router(cfg_for()), work, worker, results, results_in)


def test_router_keeps_only_the_freshest_frame_of_a_latest_camera(rig: RouterRig) -> None:
    for seq in range(3):
        rig.router.on_frame(from_camera("live", frame_parts("live", seq, "latest")))
    assert rig.router.stats_header()["queues"] == {"live": 1}
    assert [(d["reason"], d["seqs"]) for d in rig.drops()] == [("superseded", [0, 1])]


def test_router_keeps_every_frame_of_a_lossless_camera(rig: RouterRig) -> None:
    for seq in range(3):
        rig.router.on_frame(from_camera("trig", frame_parts("trig", seq, "lossless")))
    assert rig.router.stats_header()["queues"] == {"trig": 3}
    assert rig.drops() == []


def test_router_rejects_and_counts_a_message_that_is_not_json(rig: RouterRig) -> None:
    rig.router.on_frame([Msg(b"id-x"), Msg(b"not json"), Msg(b"")])
    assert rig.router.rejected.counts["malformed"] == 1
    assert rig.router.stats_header()["queues"] == {}


def test_router_refuses_and_counts_a_frame_of_a_newer_protocol_version(rig: RouterRig) -> None:
    header, pixels = frame_parts("trig", 0, "lossless")
    newer = json.loads(header) | {"v": protocol.PROTOCOL_VERSION + 1}
    rig.router.on_frame(from_camera("trig", [protocol.encode_header(newer), pixels]))
    assert rig.router.rejected.counts == {**dict.fromkeys(protocol.REJECT_REASONS, 0), "version": 1}
    assert rig.router.stats_header()["queues"] == {}
    rig.router.on_frame(from_camera("trig", [header, pixels]))  # the same frame of this version is taken
    assert rig.router.stats_header()["queues"] == {"trig": 1}


def test_router_sends_a_worker_no_more_frames_than_its_credits(rig: RouterRig, recv) -> None:
    rig.router.on_frame(from_camera("live", frame_parts("live", 0, "latest")))
    for seq in range(3):
        rig.router.on_frame(from_camera("trig", frame_parts("trig", seq, "lossless")))
    rig.attach_worker(recv, credits=2)
    rig.router.dispatch(rig.work)
    got = [json.loads(recv(rig.worker, what=f"frame {i + 1} of 2")[0]) for i in range(2)]
    assert not rig.worker.poll(100), "the router sent more frames than the worker asked for"
    assert sorted((g["cam"], g["seq"]) for g in got) == [("live", 0), ("trig", 0)]  # one per camera, in turn


def test_a_restarted_router_takes_a_joining_workers_whole_open_count(rig: RouterRig, recv) -> None:
    """The first word from a worker after a router restart may be a ready that only acknowledges
    frames (credits 0) while its credits went to the dead router: the new router must take the
    worker's open count, or each waits for the other and the line decides nothing."""
    for seq in range(3):
        rig.router.on_frame(from_camera("trig", frame_parts("trig", seq, "lossless")))
    rig.worker.send(
        protocol.encode_header({"t": "ready", "worker": "w1", "credits": 0, "credits_open": 2, "done": []})
    )
    ident, raw = recv(rig.work, what="the worker's ready")
    rig.router.on_worker([Msg(ident), Msg(raw)], rig.work)
    assert json.loads(recv(rig.worker, what="the router's welcome")[0]) == {"t": "welcome"}
    rig.router.dispatch(rig.work)
    got = [json.loads(recv(rig.worker, what=f"frame {i + 1} of 2")[0])["seq"] for i in range(2)]
    assert got == [0, 1] and not rig.worker.poll(100)


def test_equally_loaded_workers_take_turns_whatever_their_credits(rig: RouterRig, socket, recv) -> None:
    """Two idle workers (each acknowledges a frame as soon as it is decided) tie on load. ``w1``
    refills its credits after every frame; ``w2`` holds exactly the credits at which a worker
    asks for no more. Both must get frames: ranking equals by credits gave ``w1`` every one."""
    rig.attach_worker(recv, credits=8)
    w2 = socket(zmq.DEALER, identity=b"w2")
    w2.connect("inproc://work")
    rig.attach_worker(recv, credits=4, sock=w2, name="w2")
    got = []
    for seq in range(6):
        rig.router.on_frame(from_camera("trig", frame_parts("trig", seq, "lossless")))
        rig.router.dispatch(rig.work)
        assert zmq.select([rig.worker, w2], [], [], 5)[0], f"frame {seq} went to no worker"
        (name, sock), *more = [(n, s) for n, s in (("w1", rig.worker), ("w2", w2)) if s.poll(50)]
        assert not more, f"frame {seq} went to two workers"
        frame = json.loads(sock.recv_multipart()[0])
        got.append(name)
        # Decided at once; w1 asks for its credit back with the acknowledgement, w2 does not.
        done = {
            "t": "ready",
            "worker": name,
            "credits": int(name == "w1"),
            "done": [["trig", frame["epoch"], seq]],
        }
        sock.send(protocol.encode_header(done))
        rig.router.on_worker([Msg(part) for part in recv(rig.work, what=f"{name}'s ready")], rig.work)
    assert got.count("w1") == got.count("w2") == 3, got


def test_router_reports_the_frames_of_a_silent_worker_as_worker_lost(rig: RouterRig, recv) -> None:
    for seq in range(2):
        rig.router.on_frame(from_camera("trig", frame_parts("trig", seq, "lossless")))
    rig.attach_worker(recv, credits=2)
    rig.router.dispatch(rig.work)
    for i in range(2):
        recv(rig.worker, what=f"frame {i + 1} of 2")
    time.sleep(0.4)  # past the heartbeat timeout (0.3 s) without a word: the worker is lost
    rig.router.check_workers()
    assert [(d["reason"], d["cam"], d["seqs"]) for d in rig.drops()] == [("worker_lost", "trig", [0, 1])]


def test_a_restarted_worker_has_what_its_dead_predecessor_held_counted_lost_at_once(
    rig: RouterRig, socket, recv
) -> None:
    """The supervisor restarts a killed worker in a second or two, well inside the heartbeat
    timeout (10 s by default), under a new name and with the dead one's: what that one held is
    lost when the new one joins, and its camera's share is free again at once."""
    for seq in range(3):
        rig.router.on_frame(from_camera("trig", frame_parts("trig", seq, "lossless")))
    rig.attach_worker(recv, credits=2)
    rig.router.dispatch(rig.work)
    assert [h["seq"] for h in drain(rig.worker)] == [0, 1]
    w2 = socket(zmq.DEALER, identity=b"w2")
    w2.connect("inproc://work")
    hello = {"t": "heartbeat", "worker": "w2", "replaces": ["w0-never-here"], "credits_open": 1}
    w2.send(protocol.encode_header(hello))
    rig.router.on_worker([Msg(part) for part in recv(rig.work, what="w2's heartbeat")], rig.work)
    assert rig.drops() == [] and set(rig.router.workers) == {"w1", "w2"}  # replaces no one here
    w3 = socket(zmq.DEALER, identity=b"w3")
    w3.connect("inproc://work")
    # w1's first successor died before it joined (killed while loading its model): the router
    # never heard of it, so w3 names it and w1, newest first, and w1's frames are lost now.
    hello = {"t": "ready", "worker": "w3", "replaces": ["w1b-died-unseen", "w1"], "credits": 1}
    w3.send(protocol.encode_header(hello))
    rig.router.on_worker([Msg(part) for part in recv(rig.work, what="w3's ready")], rig.work)
    assert [(d["reason"], d["seqs"]) for d in rig.drops()] == [("worker_lost", [0, 1])]
    assert set(rig.router.workers) == {"w2", "w3"}


# -- worker batching -------------------------------------------------------------------------
@pytest.fixture
def worker_sockets(line_package: Path, socket: Callable[..., zmq.Socket]):
    """A worker on the session's line package (tests/packages.py), its results socket and a PULL
    to read them (inproc)."""
    from edge.worker import open_worker

    worker = open_worker(cfg_for(line_package, max_batch=8, max_wait_ms=150), "w-test")
    results_in = socket(zmq.PULL)
    results_in.bind("inproc://results")
    results = socket(zmq.PUSH)
    results.connect("inproc://results")
    yield worker, results, results_in
    worker.close()


@pytest.fixture
def worker_loop(worker_sockets, socket: Callable[..., zmq.Socket]):
    """The worker's real loop in a thread, talking to a ROUTER socket the test plays."""
    import threading

    worker, results, results_in = worker_sockets
    router = socket(zmq.ROUTER)
    router.bind("inproc://work")
    work = socket(zmq.DEALER, identity=b"w-test")
    work.connect("inproc://work")
    loop = threading.Thread(target=worker.run, args=(work, results), daemon=True)
    yield worker, router, loop, results_in
    worker.stop.set()
    if loop.is_alive():
        loop.join(10)


def test_worker_sends_a_partial_batch_when_its_deadline_passes(worker_loop, recv) -> None:
    """One frame and no more (the other cameras are dead): the batch of 8 goes out after
    max_wait_ms with that one frame, in the worker's real loop."""
    worker, router, loop, results_in = worker_loop
    # No probability exceeds 1: whatever the model says, a decided frame is a PASS.
    worker.rules = DecisionConfig(threshold=1.0, min_defect_area=1)
    loop.start()
    ident, ready = recv(router, what="the worker's ready")
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
    parts = recv(results_in, what="the lone frame's result")
    waited = time.monotonic() - sent
    header = json.loads(parts[0])
    assert header["t"] == "result" and (header["cam"], header["epoch"], header["seq"]) == ("a", 1, 0)
    assert (header["decision"], header["reason"], header["defect_count"]) == (PASS, "no defect", 0)
    # an all-background mask travels as a flag and its shape, not as 0-bytes; the only part
    # is the camera's first preview (due at once: publish.preview_every_s has not begun)
    assert header["mask_empty"] and header["mask_shape"] == [size, size]
    assert len(parts) == 2 and header["preview"] == "jpeg"
    assert waited >= worker.max_wait  # it did wait for more frames ...
    assert waited < worker.max_wait + 3.0  # ... but not for a full batch
    worker.stop.set()
    loop.join(10)
    kinds = [json.loads(router.recv_multipart()[1]) for _ in range(2) if router.poll(2000)]
    assert kinds[-1]["t"] == "bye"
    done = [d for k in kinds for d in k["done"]]
    assert done == [["a", 1, 0]]  # the router learns the frame is finished


def test_an_idle_worker_acknowledges_what_it_decided_at_once(worker_loop, recv, monkeypatch) -> None:
    """The router counts unacknowledged frames against their camera's fair share: a worker that
    has decided all it holds says so at once, not when the acknowledgement timer (made a minute
    here) runs out, or it sits idle while its camera has a backlog."""
    import edge.worker

    monkeypatch.setattr(edge.worker, "ACK_S", 60.0)
    worker, router, loop, results_in = worker_loop
    loop.start()
    ident, _ = recv(router, what="the worker's ready")
    router.send_multipart([ident, *frame_parts("a", 0, "lossless", worker.hw[0])])
    recv(results_in, what="the frame's result")
    ack = json.loads(recv(router, what="the acknowledgement")[1])
    assert (ack["t"], ack["credits"], ack["done"]) == ("ready", 0, [["a", 1, 0]])


def test_a_frame_larger_than_the_model_is_tiled_and_joined(worker_sockets, recv) -> None:
    """A strip 3.5 model widths wide becomes 4 tiles, the last one overlapping the third; a
    defect seen by that last tile alone, inside the overlap, comes out as one FAIL with the
    defect where it is in the strip."""
    worker, results, results_in = worker_sockets
    h, w = worker.hw
    strip = np.full((h, 3 * w + w // 2), 128, np.uint8)
    real_infer = worker.infer

    def infer(prepared):
        probs = real_infer(prepared)  # the line package runs on the tiles ...
        assert probs.shape == (4, h, w), "a strip of 3.5 model widths is 4 tiles"
        probs[:] = 0.0  # ... and its answer is replaced by one whose decision is known:
        probs[3, 10:16, 20:26] = 0.9  # a 6x6 defect that only the last tile sees
        return probs

    worker.infer = infer
    header = protocol.frame_header("strip", 0, time.time(), strip, sent_ts=time.time(), epoch=1)
    worker.on_frame([Msg(protocol.encode_header(header)), Msg(strip.tobytes())], results)
    worker.process(results)
    parts = recv(results_in, what="the strip's result")
    result = json.loads(parts[0])
    assert not results_in.poll(100), "a tiled frame must give exactly one result"
    x = strip.shape[1] - w + 20  # the last tile ends at the strip's right edge
    assert x < 3 * w, "the defect lies where the last two tiles overlap"
    assert (result["decision"], result["defect_count"], result["defect_area"]) == (FAIL, 1, 36)
    assert result["boxes"] == [[x, 10, 6, 6]]
    assert result["mask_shape"] == [h, strip.shape[1]]
    mask = np.frombuffer(parts[1], np.uint8).reshape(h, strip.shape[1])
    expected = np.zeros_like(mask)
    expected[10:16, x : x + 6] = 255  # the third tile's empty map does not hide it
    assert np.array_equal(mask, expected)


def test_a_frame_smaller_than_the_model_is_refused_not_guessed(worker_sockets, recv) -> None:
    worker, results, results_in = worker_sockets
    h, w = worker.hw
    narrow = np.zeros((h // 2, w // 2), np.uint8)
    header = protocol.frame_header("strip", 1, time.time(), narrow, sent_ts=time.time(), epoch=1)
    worker.on_frame([Msg(protocol.encode_header(header)), Msg(narrow.tobytes())], results)
    worker.process(results)
    refused = json.loads(recv(results_in, what="the refusal")[0])
    assert refused["decision"] == NO_DECISION and "wrong shape" in refused["reason"]


def test_worker_attaches_a_due_preview_and_no_other(worker_sockets, recv) -> None:
    """A camera's first frame carries a JPEG preview (longest side publish.preview_px), the
    next within preview_every_s none, a later one again one; a FAIL's preview comes after its
    mask and NG image, whatever the decision."""
    import cv2

    worker, results, results_in = worker_sockets
    worker.cfg.publish.preview_px, worker.cfg.publish.preview_every_s = 32, 0.3
    h, w = worker.hw
    frame = np.full((h, 2 * w), 128, np.uint8)  # two tiles wide: the preview keeps its aspect

    def send(seq: int) -> tuple[dict, list[bytes]]:
        header = protocol.frame_header("strip", seq, time.time(), frame, sent_ts=time.time(), epoch=1)
        worker.on_frame([Msg(protocol.encode_header(header)), Msg(frame.tobytes())], results)
        worker.process(results)
        parts = recv(results_in, what=f"the result of #{seq}")
        return json.loads(parts[0]), parts

    first, parts = send(0)
    assert first["preview"] == "jpeg" and first["preview_shape"] == [16, 32]
    preview = cv2.imdecode(np.frombuffer(parts[-1], np.uint8), cv2.IMREAD_UNCHANGED)
    assert preview is not None and list(preview.shape) == first["preview_shape"]
    assert abs(int(preview.mean()) - 128) <= 2  # the frame, downsized
    second, parts = send(1)
    assert "preview" not in second and len(parts) == 1 + (not second.get("mask_empty"))
    time.sleep(0.35)
    real_infer = worker.infer

    def infer(prepared):  # a FAIL: mask, image and preview, in that order
        probs = real_infer(prepared)
        probs[:] = 0.0
        probs[:, 10:16, 20:26] = 0.9
        return probs

    worker.infer = infer
    third, parts = send(2)
    assert third["decision"] == FAIL and third["preview"] == "jpeg"
    assert len(parts) == 4 and len(parts[2]) == frame.size and parts[3][:2] == b"\xff\xd8"
    # previews off: none, however long since the last
    worker.cfg.publish.preview_px = 0
    time.sleep(0.35)
    assert "preview" not in send(3)[0]


def collector_result(seq: int, **extra: Any) -> dict:
    """A PASS result for camera ``a`` with this line's tag and an empty mask (no mask part)."""
    tag = protocol.frame_tag(bytes.fromhex(KEY), "a", 1, seq)
    result = {"t": "result", "cam": "a", "epoch": 1, "seq": seq, "ts": time.time(), "decision": PASS}
    return result | {"tag": tag, "mask_shape": [4, 4], "mask_empty": True, "latency_ms": {}} | extra


def test_collector_publishes_a_preview_as_the_trailing_part_and_refuses_a_bad_one(
    socket: Callable[..., zmq.Socket], recv, tmp_path: Path
) -> None:
    import cv2

    from edge.collector import Collector

    cfg = cfg_for()
    cfg.sinks.decision_log = cfg.sinks.ng_store = ""
    collector = Collector(cfg)
    pub = socket(zmq.PUB)
    pub.bind("inproc://pub-preview")
    sub = socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect("inproc://pub-preview")
    time.sleep(0.1)  # the subscription reaches the PUB socket
    ok, encoded = cv2.imencode(".jpg", np.full((6, 8), 90, np.uint8))
    assert ok
    jpeg = encoded.tobytes()
    good = collector_result(0, preview="jpeg", preview_shape=[6, 8])
    collector.on_message([Msg(protocol.encode_header(good)), Msg(jpeg)], pub)
    topic, header, mask, preview = recv(sub, what="the published result")
    assert topic == b"result.a" and mask == bytes(16) and preview == jpeg
    header = json.loads(header)
    assert header["preview"] == "jpeg" and header["preview_shape"] == [6, 8]
    # without a preview: the three documented parts, no preview fields
    collector.on_message([Msg(protocol.encode_header(collector_result(1)))], pub)
    parts = recv(sub, what="the result without a preview")
    assert len(parts) == 3 and "preview" not in json.loads(parts[1])
    # every field a result always has, its mask's shape, and nothing that stays inside the line
    assert set(json.loads(parts[1])) == {*protocol.RESULT_FIELDS, "mask_shape"}
    # refused and counted malformed, never published: not a JPEG, too big, a flag without
    # its part or its shape, a part without the flag
    big = b"\xff\xd8" + bytes(protocol.MAX_PREVIEW_BYTES)
    bad = [
        (collector_result(2, preview="jpeg", preview_shape=[6, 8]), [b"GIF89a"]),
        (collector_result(3, preview="jpeg", preview_shape=[6, 8]), [big]),
        (collector_result(4, preview="jpeg", preview_shape=[6, 8]), []),
        (collector_result(5, preview="jpeg"), [jpeg]),
        (collector_result(6), [jpeg]),
        (collector_result(7, preview="png", preview_shape=[6, 8]), [jpeg]),
    ]
    before = collector.rejected.counts["malformed"]
    for header, rest in bad:
        collector.on_message([Msg(protocol.encode_header(header)), *(Msg(p) for p in rest)], pub)
    assert collector.rejected.counts["malformed"] - before == len(bad)
    assert collector.rejected.counts["internal"] == 0
    assert not sub.poll(200), "a refused result was published"
    assert collector.ledger.totals()["decided"] == 2


def test_router_drops_frames_older_than_their_max_age(rig: RouterRig, recv) -> None:
    image = np.zeros((8, 8), np.uint8)
    key = bytes.fromhex(KEY)
    stale = protocol.frame_header("a", 0, time.time() - 5, image, sent_ts=0, max_age_ms=500, epoch=1, key=key)
    fresh = protocol.frame_header("a", 1, time.time(), image, sent_ts=0, max_age_ms=500, epoch=1, key=key)
    for header in (stale, fresh):
        header["policy"] = "lossless"
        rig.router.on_frame(from_camera("a", [protocol.encode_header(header), image.tobytes()]))
    rig.attach_worker(recv, credits=4)
    rig.router.dispatch(rig.work)
    drops = rig.drops()
    got = json.loads(recv(rig.worker, what="the fresh frame")[0])
    assert got["seq"] == 1 and not rig.worker.poll(100)  # only the fresh frame costs an inference
    assert [(d["reason"], d["seqs"]) for d in drops] == [("too_old", [0])]


@pytest.mark.parametrize("overlap", [False, True], ids=["in-turn", "overlapped"])
def test_worker_loop_decides_every_frame(worker_loop, recv, overlap: bool) -> None:
    """Both loop modes (host work in turn with the model, or beside it as on a GPU) decide
    every frame once, and acknowledge each to the router."""
    worker, router, loop, results_in = worker_loop
    worker.backend.overlaps_host_work = overlap  # the GPU path, exercised with ONNX Runtime
    loop.start()
    ident, _ = recv(router, what="the worker's ready")
    size = worker.hw[0]
    done = []
    for seq in range(20):  # more than the 16 credits: the worker must ask for more
        if seq == 16:
            message = json.loads(recv(router, what="the worker asking for more frames")[1])
            assert message["t"] in ("ready", "heartbeat")
            done += message["done"]
        router.send_multipart([ident, *frame_parts("a", seq, "lossless", size)])
    seqs = [json.loads(recv(results_in, what=f"result {i + 1} of 20")[0])["seq"] for i in range(20)]
    assert sorted(seqs) == list(range(20))
    worker.stop.set()
    loop.join(10)
    while router.poll(500):
        done += json.loads(router.recv_multipart()[1])["done"]
    assert sorted(seq for _, _, seq in done) == list(range(20))
