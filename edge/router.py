"""The frame router: per-camera queues in, credit-based load balancing out.

Cameras connect a DEALER and send frames only as far as the router gave them credit
(``protocol.CAMERA_WINDOW`` queued frames per camera), so the router reads its frames
socket at all times and a backlogged camera waits in its own buffer: it never blocks
another camera's frames. Workers (local or on another box) connect a DEALER and ask for
work with credits too (the zguide load-balancing pattern), so a busy or slow worker never
gets more than it asked for. Cameras are served in turn, one frame each, so each gets a
fair share of the workers.

The router applies each camera's policy (``latest`` keeps only the freshest frame,
``lossless`` keeps every frame), drops frames older than their ``max_age_ms``, and knows
which frames each worker holds: when a worker dies, its frames are reported lost instead
of vanishing. Workers heartbeat from a thread of their own, also while they compute, and
name the frames they hold, so a restarted router learns them again. Every second the
router tells the collector what it holds (``router_stats``), which lets the collector
count as ``router_lost`` the frames that died with an earlier router.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from edge import protocol, sockets
from edge.config import LineConfig
from edge.process import StopEvent

log = logging.getLogger(__name__)

ROUTER_STATS_INTERVAL_S = 1.0
#: a worker whose frame socket is not (yet) reachable is skipped for this long
UNREACHABLE_PAUSE_S = 0.2
#: a camera that had a frame sent to a worker this recently still counts for the fair share
ACTIVE_S = 1.0

FrameKey = tuple[str, int, int]  # (camera, epoch, seq)


@dataclass
class WorkerState:
    name: str
    credits: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    #: (camera, epoch, seq) -> the frame's tag, for frames the worker has not finished
    inflight: dict[FrameKey, str] = field(default_factory=dict)
    skip_until: float = 0.0
    #: the router's dispatch count when this worker last got a frame: equally loaded workers
    #: take turns by it (one that just joined, at 0, goes first)
    turn: int = 0
    #: computing or holding frames, by its last heartbeat: progress, not a stall (a worker
    #: stuck outside inference stops its heartbeats and is declared lost instead)
    busy: bool = False
    #: what the worker rejected on its frame socket, by why (from its heartbeats)
    rejected: dict[str, int] = field(default_factory=dict)
    #: why it runs another backend than configured, e.g. TensorRT failed to start (heartbeats)
    backend_note: str = ""

    @property
    def ident(self) -> bytes:
        """The routing id of the worker's frame socket (its DEALER identity is its name)."""
        return self.name.encode()


@dataclass
class CameraQueue:
    """One camera's frames in the router, and what the router owes it in credit."""

    policy: str = "latest"
    frames: collections.deque = field(default_factory=collections.deque)
    #: the routing id of the camera's DEALER (None until it has spoken)
    ident: bytes | None = None
    #: credits to hand back: one per frame that left the queue
    owed: int = 0
    #: when a frame of this camera last went to a worker
    served_at: float = 0.0

    @property
    def window(self) -> int:
        return protocol.CAMERA_WINDOW.get(self.policy, protocol.CAMERA_WINDOW["lossless"])


class Router:
    """Owns the frames and work sockets; see the module docstring."""

    def __init__(self, cfg: LineConfig) -> None:
        self.cfg = cfg
        #: names this router process; a new one tells the collector that the old one died
        self.epoch = time.time_ns() // 1_000_000
        self.stop = StopEvent()  # a signal handler sets it
        self.cameras: dict[str, CameraQueue] = {}
        self.workers: dict[str, WorkerState] = {}
        self._rr: collections.deque[str] = collections.deque()
        self.key = cfg.key
        #: the cameras of this line's config: frames of any other are refused
        self.known_cameras = {cam.id for cam in cfg.cameras}
        self.rejected = protocol.Rejections("frames", log)
        self.rejected_work = protocol.Rejections("work", log)
        #: (camera, epoch) -> reason -> [(seq, tag)], sent to the collector in batches
        self.drops: dict[tuple[str, int], dict[str, list[tuple[int, str]]]] = collections.defaultdict(
            lambda: collections.defaultdict(list)
        )
        self.dispatched = 0

    # -- bookkeeping ------------------------------------------------------------
    def drop(self, cam: str, epoch: int, seq: int, tag: str, reason: str) -> None:
        self.drops[(cam, epoch)][reason].append((seq, tag))

    def flush_drops(self, results: zmq.Socket) -> None:
        for (cam, epoch), by_reason in list(self.drops.items()):
            for reason, frames in list(by_reason.items()):
                if frames:
                    seqs, tags = (list(x) for x in zip(*frames, strict=True))
                    header = {"t": "drop", "cam": cam, "epoch": epoch, "reason": reason}
                    results.send(protocol.encode_header({**header, "seqs": seqs, "tags": tags}))
        self.drops.clear()

    def drop_frame(self, header: dict[str, Any], reason: str) -> None:
        self.drop(header["cam"], header["epoch"], header["seq"], header["tag"], reason)

    def camera(self, cam: str, policy: str) -> CameraQueue:
        queue = self.cameras.get(cam)
        if queue is None:
            queue = self.cameras[cam] = CameraQueue(policy=policy)
            self._rr.append(cam)
        queue.policy = policy
        return queue

    # -- cameras ----------------------------------------------------------------
    def on_frame(self, parts: list[Any]) -> None:
        """One message from a camera: ``[routing id, header, seal]`` (hello) or
        ``[routing id, header, pixels]`` (frame). Anything else is rejected and counted."""
        if len(parts) != 3:
            self.rejected(f"{len(parts) - 1} part(s) on the frames socket; a camera sends 2")
            return
        ident = parts[0].bytes
        # a hello is sealed (its seal is the third part); a frame's third part is its pixels
        header = protocol.admit(
            parts[1].bytes,
            protocol.FROM_CAMERAS,
            self.rejected,
            key=self.key,
            mac=parts[2].buffer,
            cameras=self.known_cameras,
        )
        if header is None:
            return
        cam = header["cam"]
        if header["t"] == "hello":
            queue = self.camera(cam, header["policy"])
            queue.ident = ident
            # Credit for what the window has room for, less what the camera still holds.
            queue.owed = max(0, queue.window - len(queue.frames) - header["credits"])
            return
        epoch, seq = header["epoch"], header["seq"]
        if not protocol.tag_ok(self.key, cam, epoch, seq, header["tag"]):
            self.rejected(f"frame {cam}#{seq} without this line's tag", "unauthenticated")
            return
        queue = self.camera(cam, header["policy"])
        queue.ident = ident
        try:
            if header["decide"]:
                protocol.image_from_frame(header, parts[2].buffer)
        except protocol.ProtocolError as exc:
            # A frame of this line whose pixels do not match its header: closed as a drop.
            self.rejected(str(exc))
            self.drop_frame(header, "malformed")
            queue.owed += 1
            return
        if header["policy"] == "latest":
            while queue.frames:
                old_header, _ = queue.frames.popleft()
                self.drop_frame(old_header, "superseded")
                queue.owed += 1
        queue.frames.append((header, parts[2]))

    def send_credits(self, frames: zmq.Socket) -> None:
        for cam, queue in self.cameras.items():
            if queue.owed <= 0 or queue.ident is None:
                continue
            header = protocol.seal(self.key, {"t": "credit", "cam": cam, "n": queue.owed})
            try:
                frames.send_multipart([queue.ident, *header], zmq.NOBLOCK)
            except zmq.Again:
                continue  # its pipe is full: try again next round
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                queue.ident = None  # that camera process is gone; a new one says hello
            queue.owed = 0

    # -- workers ----------------------------------------------------------------
    def on_worker(self, parts: list[Any], work: zmq.Socket | None = None) -> None:
        """One message from a worker: ``[routing id, header]`` (frame socket or heartbeat thread)."""
        if len(parts) != 2:
            self.rejected_work(f"{len(parts) - 1} part(s) on the work socket; a worker sends 1")
            return
        header = protocol.admit(parts[1].bytes, protocol.FROM_WORKERS, self.rejected_work)
        if header is None:
            return
        name, kind = header["worker"], header["t"]
        state = self.workers.get(name)
        if state is None:
            for dead in header["replaces"]:
                # The supervisor restarted a worker that died (kill -9, a crash): what the dead
                # one held is lost now, not after its heartbeat timeout (10 s by default), in
                # which its frames also held back their camera's fair share. Each earlier worker
                # of the slot too: one restarted in between may have died before it joined.
                if dead in self.workers:
                    self.lose_worker(dead, "worker_lost")
            # A new worker, one that was declared lost and is back, or (after a restart of
            # this router) one that was here before: its heartbeat says what it holds.
            state = self.workers[name] = WorkerState(name=name)
            for cam, epoch, seq, tag in header.get("holding", []):
                if protocol.tag_ok(self.key, cam, epoch, seq, tag):  # only frames of this line
                    state.inflight[(cam, epoch, seq)] = tag
            # Its whole open count, whichever message comes first: a ready that only acknowledges
            # frames (credits 0) from a worker whose credits went to a dead router would
            # otherwise leave both sides waiting for the other (seen with a fast model).
            state.credits = max(header.get("credits_open", 0), header.get("credits", 0))
            joined = True
            log.info("worker %s joined", name)
            if work is not None:
                self.welcome(work, state)
        else:
            joined = False
        state.last_seen = time.monotonic()
        if kind == "heartbeat":
            state.busy = bool(header["busy"] or header["holding"])
            state.rejected = header["rejected"]
            state.backend_note = header["backend_note"]
        for cam, epoch, seq in header.get("done", []):
            state.inflight.pop((cam, epoch, seq), None)
        if kind == "ready":
            if not joined:  # a joining worker's credits_open already counts these
                state.credits += header["credits"]
            state.skip_until = 0.0  # it spoke on its frame socket: reachable
        elif kind == "bye":
            self.lose_worker(name, "worker_exit")

    def welcome(self, work: zmq.Socket, state: WorkerState) -> None:
        """Tell a worker that a line is here (a worker started by hand waits for this)."""
        # Its frame socket may not be connected yet: then it learns of the line from its first frame.
        with contextlib.suppress(zmq.ZMQError):
            work.send_multipart([state.ident, protocol.encode_header({"t": "welcome"})], zmq.NOBLOCK)

    def lose_worker(self, name: str, reason: str) -> None:
        state = self.workers.pop(name, None)
        if state is None:
            return
        for (cam, epoch, seq), tag in state.inflight.items():
            self.drop(cam, epoch, seq, tag, reason)
        if state.inflight:
            # The collector counts these; any it had seen decided already are not counted twice.
            log.warning(
                "worker %s gone (%s): %d frame(s) it held reported", name, reason, len(state.inflight)
            )
        else:
            log.info("worker %s left", name)

    def check_workers(self) -> None:
        timeout = self.cfg.workers.heartbeat_timeout_s
        now = time.monotonic()
        for name, state in list(self.workers.items()):
            if now - state.last_seen > timeout:
                self.lose_worker(name, "worker_lost")

    def dispatch(self, work: zmq.Socket) -> None:
        """Hand queued frames to workers with credits, cameras in turn, one frame each.

        Fair share: while several cameras are active, none may hold more than its share of
        the frames the workers hold or have asked for. Without it, a camera that always has
        a backlog takes every credit the moment it frees, and a live camera, whose frame
        arrives a moment later, finds the workers' queues full of the other camera's frames.
        """
        now = time.monotonic()
        held = collections.Counter(cam for w in self.workers.values() for cam, _, _ in w.inflight)
        slots = sum(len(w.inflight) + max(0, w.credits) for w in self.workers.values())
        active = sum(1 for q in self.cameras.values() if q.frames or now - q.served_at < ACTIVE_S)
        share = max(1, -(-slots // max(1, active)))
        idle_rounds = 0
        while self._rr and idle_rounds < len(self._rr):
            # The least loaded worker: the fewest frames held; among equals, the one whose
            # turn is oldest. Not the one with the most credits: an idle worker acknowledges
            # at once, so two idle workers tie on load, and one that refills its credits after
            # every frame would then take them all (seen in CI: another worker, holding exactly
            # the credits at which it asks for no more, got no frame in two minutes).
            worker = min(
                (w for w in self.workers.values() if w.skip_until <= now and w.credits > 0),
                key=lambda w: (len(w.inflight), w.turn),
                default=None,
            )
            if worker is None:
                return
            cam = self._rr[0]
            self._rr.rotate(-1)
            queue = self.cameras[cam]
            if not queue.frames or held[cam] >= share:
                idle_rounds += 1
                continue
            idle_rounds = 0
            header, pixels = queue.frames.popleft()
            age_ms = (time.time() - header["ts"]) * 1000
            max_age = header["max_age_ms"]
            if max_age and header["decide"] and age_ms > max_age:
                self.drop_frame(header, "too_old")
                queue.owed += 1
                continue
            header["routed"] = time.time()
            try:
                work.send_multipart([worker.ident, protocol.encode_header(header), pixels], copy=False)
            except zmq.ZMQError as exc:
                # Its frame socket is not connected (yet, or any more): keep the frame, try
                # another worker; a worker that stays silent is lost by its heartbeat timeout.
                queue.frames.appendleft((header, pixels))
                worker.skip_until = now + UNREACHABLE_PAUSE_S
                if exc.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                    raise
                continue
            worker.credits -= 1
            worker.inflight[(cam, header["epoch"], header["seq"])] = header["tag"]
            held[cam] += 1
            queue.owed += 1
            queue.served_at = now
            self.dispatched += 1
            worker.turn = self.dispatched

    # -- reports ------------------------------------------------------------------
    def holding(self) -> dict[str, dict[str, list[int]]]:
        """Every frame this router knows to be alive (queued, or held by a worker), per camera
        and epoch: the collector's evidence for what was lost with an earlier router."""
        out: dict[str, dict[str, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(list))
        for cam, queue in self.cameras.items():
            for header, _ in queue.frames:
                out[cam][str(header["epoch"])].append(header["seq"])
        for state in self.workers.values():
            for cam, epoch, seq in state.inflight:
                out[cam][str(epoch)].append(seq)
        return {cam: dict(epochs) for cam, epochs in out.items()}

    def stats_header(self) -> dict:
        return {
            "t": "router_stats",
            "router_epoch": self.epoch,
            "queues": {cam: len(q.frames) for cam, q in self.cameras.items()},
            "workers": len(self.workers),
            "worker_states": {
                name: {"inflight": len(w.inflight), "credits": w.credits} for name, w in self.workers.items()
            },
            "credits": sum(w.credits for w in self.workers.values()),
            "busy": sum(w.busy for w in self.workers.values()),
            "inflight": sum(len(w.inflight) for w in self.workers.values()),
            "holding": self.holding(),
            "rejected": self.rejections(),
            "dispatched": self.dispatched,
            "backend_notes": {name: w.backend_note for name, w in self.workers.items() if w.backend_note},
        }

    def rejections(self) -> dict[str, dict[str, int]]:
        """Messages rejected on the router's sockets and by its workers, by socket and why."""
        workers: collections.Counter = collections.Counter()
        for state in self.workers.values():
            workers.update(state.rejected)
        return {
            "frames": dict(self.rejected.counts),
            "work": dict(self.rejected_work.counts),
            "worker_frames": dict(workers),
        }

    def queued(self) -> int:
        return sum(len(q.frames) for q in self.cameras.values())

    # -- main loop --------------------------------------------------------------------
    def run(self, frames: zmq.Socket, work: zmq.Socket, results: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(work, zmq.POLLIN)
        # Always read the cameras: back-pressure is per camera, through credits.
        poller.register(frames, zmq.POLLIN)
        last_stats = 0.0
        drain_deadline = None
        while True:
            events = dict(poller.poll(50))
            if frames in events:
                for _ in range(256):  # bounded burst, so workers are still served
                    try:
                        parts = frames.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.rejected.guard(self.on_frame, parts)
            if work in events:
                while True:
                    try:
                        parts = work.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.rejected_work.guard(self.on_worker, parts, work)
            self.dispatch(work)
            self.check_workers()
            if not self.stop.is_set():
                self.send_credits(frames)
            now = time.monotonic()
            if now - last_stats >= ROUTER_STATS_INTERVAL_S or self.drops:
                self.flush_drops(results)
                if now - last_stats >= ROUTER_STATS_INTERVAL_S:
                    results.send_multipart(protocol.seal(self.key, self.stats_header()))
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
        for queue in self.cameras.values():
            for header, _ in queue.frames:
                self.drop_frame(header, "shutdown")
            queue.frames.clear()
        for name in list(self.workers):
            if self.workers[name].inflight:
                self.lose_worker(name, "shutdown")
        self.flush_drops(results)
        results.send_multipart(protocol.seal(self.key, {**self.stats_header(), "final": True}))


def router_main(cfg_dict: dict, log_level: int, ready: Any = None) -> None:
    """Entry point of the spawned router process."""
    from edge.config import from_dict
    from edge.keys import line_keys
    from edge.process import die_with_parent, leave_run_dir, setup_process

    cfg = from_dict(cfg_dict)
    setup_process("router", log_level)
    router = Router(cfg)
    die_with_parent(router.stop.set)
    signal.signal(signal.SIGTERM, lambda *_: router.stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    ctx = zmq.Context()
    frames = sockets.make_socket(ctx, zmq.ROUTER, rcvhwm=10000, sndhwm=10000)
    work = sockets.make_socket(ctx, zmq.ROUTER, sndhwm=256, rcvhwm=10000)
    results = sockets.make_socket(ctx, zmq.PUSH, sndhwm=100000)
    keys = line_keys(cfg)
    try:
        sockets.bind(frames, cfg.endpoint("frames"), keys)
        sockets.bind(work, cfg.endpoint("work"), keys)
        sockets.connect(results, cfg.endpoint("results"), keys)
        if ready is not None:
            ready.set()
        router.run(frames, work, results)
    finally:
        sockets.close_all(ctx, frames, work, results)
        for name in ("frames", "work"):
            sockets.remove_ipc_file(cfg.endpoint(name))
        leave_run_dir(cfg.run_dir)
