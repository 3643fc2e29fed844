"""The frame router: per-camera queues in, credit-based load balancing out.

Cameras PUSH frames here; workers (local or on another box) connect a DEALER
and ask for work with credits (the zguide load-balancing pattern), so a busy
or slow worker never gets more than it asked for. The router applies each
camera's policy (``latest`` keeps only the freshest frame, ``lossless`` keeps
every frame within a bound and pushes back on the cameras beyond it), drops
frames older than their ``max_age_ms``, and knows which frames each worker
holds: when a worker dies, its frames are reported lost instead of vanishing.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from edge import protocol, sockets
from edge.config import LineConfig

log = logging.getLogger(__name__)

#: lossless frames the router holds before it stops reading from the cameras
LOSSLESS_BOUND = 256
ROUTER_STATS_INTERVAL_S = 1.0


@dataclass
class WorkerState:
    credits: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    #: (camera, epoch, seq) -> when it was sent, for frames the worker has not finished
    inflight: dict[tuple[str, int, int], float] = field(default_factory=dict)
    name: str = ""


class Router:
    """Owns the frames and work sockets; see the module docstring."""

    def __init__(self, cfg: LineConfig) -> None:
        self.cfg = cfg
        self.stop = threading.Event()
        self.draining = False
        self.queues: dict[str, collections.deque] = {}
        self.policies: dict[str, str] = {}
        self.workers: dict[bytes, WorkerState] = {}
        self._rr: collections.deque[str] = collections.deque()
        self.rejected = protocol.Rejections("frames", log)
        self.lossless_queued = 0
        #: (camera, epoch) -> reason -> seqs, sent to the collector in batches
        self.drops: dict[tuple[str, int], dict[str, list[int]]] = collections.defaultdict(
            lambda: collections.defaultdict(list)
        )
        self.dispatched = 0

    # -- bookkeeping ------------------------------------------------------------
    def drop(self, frame: dict[str, Any], reason: str) -> None:
        self.drops[(frame["cam"], frame.get("epoch", 0))][reason].append(frame["seq"])

    def flush_drops(self, results: zmq.Socket) -> None:
        for (cam, epoch), by_reason in list(self.drops.items()):
            for reason, seqs in list(by_reason.items()):
                if seqs:
                    header = {"t": "drop", "cam": cam, "epoch": epoch, "seqs": seqs, "reason": reason}
                    results.send(protocol.encode_header(header))
        self.drops.clear()

    def on_frame(self, parts: list[Any], results: zmq.Socket) -> None:
        try:
            header = protocol.decode_header(parts[0].bytes)
        except protocol.ProtocolError as exc:
            self.rejected(str(exc))
            return
        kind = header["t"]
        if kind == "stats":
            results.send(parts[0].bytes)  # camera counters go straight to the collector
            return
        if kind != "frame" or len(parts) != 2:
            self.rejected(f"unexpected message kind {kind!r} with {len(parts)} part(s) on frames")
            return
        cam, seq = header.get("cam"), header.get("seq")
        if not isinstance(cam, str) or not isinstance(seq, int):
            self.rejected("frame header without a string cam and an integer seq")
            return
        policy = header.get("policy", "latest")
        queue = self.queues.get(cam)
        if queue is None:
            queue = self.queues[cam] = collections.deque()
            self._rr.append(cam)
        self.policies[cam] = policy
        if policy == "latest":
            while queue:
                old_header, _ = queue.popleft()
                self.drop(old_header, "superseded")
        else:
            self.lossless_queued += 1
        queue.append((header, parts[1]))

    def on_worker(self, parts: list[Any], results: zmq.Socket) -> None:
        ident = parts[0].bytes
        try:
            header = protocol.decode_header(parts[-1].bytes)
        except protocol.ProtocolError as exc:
            log.warning("malformed message from a worker: %s", exc)
            return
        state = self.workers.get(ident)
        if state is None:
            state = self.workers[ident] = WorkerState(name=header.get("worker", ident.hex()))
            log.info("worker %s joined", state.name)
        state.last_seen = time.monotonic()
        for cam, epoch, seq in header.get("done", []):
            state.inflight.pop((cam, epoch, seq), None)
        if header["t"] == "ready":
            state.credits += int(header.get("credits", 0))
        elif header["t"] == "bye":
            self.lose_worker(ident, "worker_exit")

    def lose_worker(self, ident: bytes, reason: str) -> None:
        state = self.workers.pop(ident, None)
        if state is None:
            return
        for cam, epoch, seq in state.inflight:
            self.drop({"cam": cam, "epoch": epoch, "seq": seq}, reason)
        if state.inflight:
            log.warning(
                "worker %s gone (%s): %d frame(s) counted lost", state.name, reason, len(state.inflight)
            )
        else:
            log.info("worker %s left", state.name)

    def check_workers(self) -> None:
        timeout = self.cfg.workers.heartbeat_timeout_s
        now = time.monotonic()
        for ident, state in list(self.workers.items()):
            if now - state.last_seen > timeout:
                self.lose_worker(ident, "worker_lost")

    def dispatch(self, work: zmq.Socket) -> None:
        """Hand queued frames to workers with credits, cameras in round-robin order."""
        idle_rounds = 0
        while self._rr and idle_rounds < len(self._rr):
            worker = max(self.workers.items(), key=lambda kv: kv[1].credits, default=None)
            if worker is None or worker[1].credits <= 0:
                return
            ident, state = worker
            cam = self._rr[0]
            self._rr.rotate(-1)
            queue = self.queues[cam]
            if not queue:
                idle_rounds += 1
                continue
            idle_rounds = 0
            header, pixels = queue.popleft()
            if self.policies.get(cam) != "latest":
                self.lossless_queued -= 1
            age_ms = (time.time() - header.get("ts", 0.0)) * 1000
            max_age = header.get("max_age_ms") or 0
            if max_age and header.get("decide", True) and age_ms > max_age:
                self.drop(header, "too_old")
                continue
            header["routed"] = time.time()
            try:
                work.send_multipart([ident, protocol.encode_header(header), pixels], copy=False)
            except zmq.ZMQError:  # the worker vanished between its last message and now
                queue.appendleft((header, pixels))
                if self.policies.get(cam) != "latest":
                    self.lossless_queued += 1
                self.lose_worker(ident, "worker_lost")
                continue
            state.credits -= 1
            state.inflight[(cam, header.get("epoch", 0), header["seq"])] = time.monotonic()
            self.dispatched += 1

    def stats_header(self) -> dict:
        return {
            "t": "router_stats",
            "queues": {cam: len(q) for cam, q in self.queues.items()},
            "workers": len(self.workers),
            "credits": sum(w.credits for w in self.workers.values()),
            "inflight": sum(len(w.inflight) for w in self.workers.values()),
            "malformed": self.rejected.count,
            "dispatched": self.dispatched,
        }

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def run(self, frames: zmq.Socket, work: zmq.Socket, results: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(work, zmq.POLLIN)
        frames_registered = False
        last_stats = 0.0
        drain_deadline = None
        while True:
            # Stop reading cameras while the lossless backlog is at its bound: the
            # pressure moves back to the cameras' own (counted) buffers.
            want_frames = self.lossless_queued < LOSSLESS_BOUND
            if want_frames and not frames_registered:
                poller.register(frames, zmq.POLLIN)
                frames_registered = True
            elif not want_frames and frames_registered:
                poller.unregister(frames)
                frames_registered = False
            events = dict(poller.poll(50))
            if frames in events:
                for _ in range(256):  # bounded burst, so workers are still served
                    try:
                        parts = frames.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.on_frame(parts, results)
            if work in events:
                while True:
                    try:
                        parts = work.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.on_worker(parts, results)
            self.dispatch(work)
            self.check_workers()
            now = time.monotonic()
            if now - last_stats >= ROUTER_STATS_INTERVAL_S or self.drops:
                self.flush_drops(results)
                if now - last_stats >= ROUTER_STATS_INTERVAL_S:
                    results.send(protocol.encode_header(self.stats_header()))
                    last_stats = now
            if self.stop.is_set():
                if drain_deadline is None:
                    drain_deadline = now + self.cfg.shutdown_timeout_s * 0.5
                    log.info(
                        "draining: %d queued, %d in flight", self.queued(), self.stats_header()["inflight"]
                    )
                busy = self.queued() or any(w.inflight for w in self.workers.values())
                if not busy or now > drain_deadline or not self.workers:
                    break
        for queue in self.queues.values():
            for header, _ in queue:
                self.drop(header, "shutdown")
            queue.clear()
        for ident in list(self.workers):
            state = self.workers[ident]
            if state.inflight:
                self.lose_worker(ident, "shutdown")
        self.flush_drops(results)
        results.send(protocol.encode_header({**self.stats_header(), "final": True}))


def router_main(cfg_dict: dict, log_level: int, ready: Any = None) -> None:
    """Entry point of the spawned router process."""
    from edge.config import from_dict
    from edge.process import setup_process

    cfg = from_dict(cfg_dict)
    setup_process("router", log_level)
    router = Router(cfg)
    signal.signal(signal.SIGTERM, lambda *_: router.stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    ctx = zmq.Context()
    frames = sockets.make_socket(ctx, zmq.PULL, rcvhwm=64)
    work = sockets.make_socket(ctx, zmq.ROUTER, sndhwm=256, rcvhwm=10000)
    results = sockets.make_socket(ctx, zmq.PUSH, sndhwm=100000)
    try:
        sockets.bind(frames, cfg.endpoint("frames"))
        sockets.bind(work, cfg.endpoint("work"))
        sockets.connect(results, cfg.endpoint("results"))
        if ready is not None:
            ready.set()
        router.run(frames, work, results)
    finally:
        sockets.close_all(ctx, frames, work, results)
