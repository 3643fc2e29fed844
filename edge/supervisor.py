"""The supervisor: the main process of `lineside run`.

It checks what the line needs before anything starts (fail fast with one
line), spawns the collector, the router, the workers and one process per
camera, restarts any that dies with capped backoff, and on SIGTERM/SIGINT or
``--duration`` stops them in order (cameras, router drain, workers, collector)
within ``shutdown_timeout_s``.

A line whose cameras are all recordings (a video file, a folder without ``loop``)
stops by itself at their end, after everything they sent has been decided: it waits as
long as the ledger makes progress, and gives up only when nothing has been decided or
dropped for ``shutdown_timeout_s``.

Exit codes: 0 clean stop, 2 bad config or resources at start (the model package
included: its graphs' sha256 and inputs/outputs are checked against its manifest before
any process starts), or a worker that could not load its model later (it exits with
EXIT_MODEL_LOAD and is not restarted: the line stops), 3 the shutdown bound passed and
processes had to be killed, 4 frames of a lossless camera were lost (dropped for a
reason the config did not ask for: shutdown, worker_lost, router_lost, ...), so a
script that replays a recording can trust exit 0.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from converter.errors import LinesideError
from converter.package import PRECISIONS, ModelPackage
from edge import protocol, sockets
from edge.collector import PROGRESS_SLOTS
from edge.config import (
    STAGE_FLOOR_S,
    LineConfig,
    make_run_dir,
    open_endpoints,
    open_metrics,
    stage_marks,
    to_dict,
)
from edge.keys import check_line_keys, line_keys
from edge.router import ROUTER_STATS_INTERVAL_S
from edge.sinks.feed import check_plant_sinks, enabled_sinks
from edge.sources.backoff import Backoff
from edge.worker import EXIT_MODEL_LOAD, HEARTBEAT_S, worker_name

log = logging.getLogger(__name__)

EXIT_OK, EXIT_CONFIG, EXIT_FORCED, EXIT_LOST = 0, 2, 3, 4
#: how long a child may take to come up before start-up is declared failed
START_TIMEOUT_S = 60.0
#: the least time a replay's drain waits without a frame settled or a worker busy: the busy
#: signal comes by a worker heartbeat, then the router's stats, so a shorter wait could stop
#: a line that is computing (twice that path, for a loaded machine)
DRAIN_STALL_FLOOR_S = 2 * (HEARTBEAT_S + ROUTER_STATS_INTERVAL_S)


#: how long the plant's sinks (stopped after the collector) may take to deliver what they hold and
#: exit: MQTT gives itself 1.5 s, OPC UA 1 s to close its sessions, and a process that loaded
#: asyncua needs a second or two more to exit on a loaded box
SINK_STOP_S = 5.0

#: how long a late process gets to print its stacks before it is killed
STACK_DUMP_WAIT_S = 0.3


def dump_stacks(process: Any, wait_s: float = STACK_DUMP_WAIT_S) -> None:
    """Have ``process`` print every thread's stack to the line's stderr (the handler that
    ``edge.process.setup_process`` registers for SIGUSR1), so that a stop that ran out of time
    leaves the place where it was stuck in the log."""
    if not hasattr(signal, "SIGUSR1") or process.pid is None:
        return
    with contextlib.suppress(OSError):
        os.kill(process.pid, signal.SIGUSR1)
        process.join(wait_s)  # a process that ends meanwhile has answered too


class StartupError(LinesideError):
    """A process of the line could not start; the message is the child's own error line."""


class LineStopped(LinesideError):
    """The running line stopped because a process cannot work (a worker cannot load its model)."""


def _child(role: str, target: str, errors: Any, *args: Any) -> None:
    """Run an entry point in a spawned process; a user-facing error becomes one line to the parent."""
    import importlib

    module, func = target.rsplit(":", 1)
    try:
        getattr(importlib.import_module(module), func)(*args)
    except LinesideError as exc:
        # the exit code tells the supervisor whether a restart can help (see EXIT_MODEL_LOAD)
        code = getattr(exc, "exit_code", EXIT_CONFIG)
        errors.put((role, str(exc), code))
        sys.exit(code)
    except KeyboardInterrupt:
        sys.exit(0)


@dataclass
class Child:
    role: str
    target: str
    args: tuple
    process: Any = None
    backoff: Backoff = field(default_factory=lambda: Backoff(initial_s=0.5, cap_s=10.0))
    restart_at: float = 0.0
    restarts: int = 0
    started_at: float = 0.0
    #: a camera whose stream ended (a video file, a folder without loop) exits 0 and stays down
    finished: bool = False


class Supervisor:
    """See the module docstring."""

    def __init__(self, cfg: LineConfig, duration: float = 0.0, summary_path: str | None = None) -> None:
        self.cfg = cfg
        self.duration = duration
        self.summary_path = summary_path
        self.ctx = mp.get_context("spawn")  # CUDA does not survive fork
        self.errors = self.ctx.Queue()
        self.stopping = False
        self.children: list[Child] = []
        self.log_level = logging.getLogger().getEffectiveLevel()
        self.not_ready: dict[str, str] = {}
        #: why the line must stop (a worker that cannot load its model), said once at the end
        self.failure: str | None = None
        #: the collector's view of the ledger (see Collector.publish_progress)
        self.progress = self.ctx.Array("d", len(PROGRESS_SLOTS), lock=False)
        #: when the collector will be killed (``time.monotonic()``, one clock for every process
        #: of the host), set before its SIGTERM: its drain must end in time to close the books
        self.collector_kill_at = self.ctx.Value("d", 0.0, lock=False)

    def ledger(self, slot: str) -> float:
        return self.progress[PROGRESS_SLOTS.index(slot)]

    # -- start-up -------------------------------------------------------------------
    def preflight(self) -> tuple[int, int]:
        """Everything that can be checked before a process starts; returns the model input (h, w)."""
        from edge.camera import build_source

        self.check_security()
        for cam in self.cfg.cameras:
            build_source(cam)  # a bad source option stops start-up here, with one line
        package = ModelPackage.open(self.cfg.resolve(self.cfg.model.package))
        # A graph changed since export, or one whose input/output the manifest does not
        # describe, would only fail inside the workers, on every restart: refuse it here.
        unchecked = package.verify()
        if unchecked:
            log.warning(
                "%s: manifest.json (schema %d) records no sha256 of %s, so a graph changed since export "
                "goes unnoticed; re-run `lineside export` to add them",
                package.root,
                package.manifest.schema_version,
                ", ".join(unchecked),
            )
        for precision in PRECISIONS:
            if precision == self.cfg.model.precision or package.has_precision(precision):
                package.check_graph_io(precision)  # also raises naming a missing graph
        for sink in (self.cfg.sinks.decision_log, self.cfg.sinks.ng_store):
            if sink:
                self._check_writable(self.cfg.resolve(sink))
        check_plant_sinks(self.cfg)  # a missing library or password stops start-up with one line
        return package.manifest.input.height, package.manifest.input.width

    def check_security(self) -> None:
        """Load the CURVE keys the line will need (one line if one is missing), and say at
        every start what listens to the network unauthenticated (the config opted in)."""
        keys = check_line_keys(self.cfg)
        if keys is not None:
            log.info("tcp endpoints use CURVE; clients authorized in %s", keys.describe("line"))
        exposed = open_endpoints(self.cfg)
        if exposed:
            log.warning(
                "security.insecure: %s accept unauthenticated connections from the network: anyone "
                "who reaches them can inject frames and results or take frames as a worker; set "
                "security.keys (docs/security.md)",
                ", ".join(exposed),
            )
        if open_metrics(self.cfg):
            log.warning(
                "%s is served to the network without authentication (read-only); see docs/security.md",
                open_metrics(self.cfg),
            )

    def _check_writable(self, path: Any) -> None:
        import shutil

        folder = path if path.suffix == "" else path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create {folder}: {exc.strerror}; fix the sinks paths in the config"
            raise StartupError(msg) from None
        free = shutil.disk_usage(folder).free
        if free < 50 * 1024 * 1024:
            msg = f"{folder}: only {free // (1024 * 1024)} MiB free; free disk space or move the sinks"
            raise StartupError(msg)

    def spawn(self, child: Child) -> None:
        child.process = self.ctx.Process(
            target=_child,
            args=(child.role, child.target, self.errors, *child.args),
            name=child.role,
            daemon=False,
        )
        child.process.start()
        child.started_at = time.monotonic()

    def wait_ready(self, child: Child, event: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not event.wait(0.1):
            self.raise_child_error()
            if not child.process.is_alive():
                code = child.process.exitcode
                msg = f"{child.role} exited with code {code} during start-up; run with -v for details"
                raise StartupError(msg)
            if time.monotonic() > deadline:
                msg = f"{child.role} did not come up within {START_TIMEOUT_S:.0f} s"
                raise StartupError(msg)

    def raise_child_error(self) -> None:
        try:
            role, message, _code = self.errors.get_nowait()
        except queue.Empty:
            return
        raise StartupError(f"{role}: {message}")

    def read_errors(self) -> None:
        """Take the error lines children sent; a worker's model-load failure stops the line."""
        while True:
            try:
                role, message, code = self.errors.get_nowait()
            except queue.Empty:
                return
            if code == EXIT_MODEL_LOAD:
                self.failure, self.stopping = f"{role}: {message}", True
                continue
            log.error("%s: %s", role, message)
            self.not_ready[role] = message

    def start(self, input_hw: tuple[int, int]) -> None:
        cfg_dict = to_dict(self.cfg)
        lvl = self.log_level
        started = time.time()
        ready = self.ctx.Event()
        collector = Child(
            "collector",
            "edge.collector:collector_main",
            (cfg_dict, lvl, started, self.summary_path, ready, self.progress, self.collector_kill_at),
        )
        self.children.append(collector)
        self.spawn(collector)
        self.wait_ready(collector, ready)
        # The plant's sinks subscribe to the publish socket, bound now, so they miss no result;
        # the line does not wait for them, and they restart like any child (edge/sinks/feed.py).
        for name in enabled_sinks(self.cfg):
            sink = Child(f"sink:{name}", f"edge.sinks.{name}:{name}_main", (cfg_dict, lvl))
            self.children.append(sink)
            self.spawn(sink)
        ready = self.ctx.Event()
        router = Child("router", "edge.router:router_main", (cfg_dict, lvl, ready))
        self.children.append(router)
        self.spawn(router)
        self.wait_ready(router, ready)
        # Workers load their model in parallel; the line starts only when all of them
        # could (a missing graph or a refused engine stops start-up with its own line).
        workers = []
        for i in range(self.cfg.workers.count):
            ready = self.ctx.Event()
            args = (cfg_dict, i, lvl, None, ready, None, worker_name(i), ())
            worker = Child(f"worker:{i}", "edge.worker:worker_main", args)
            self.children.append(worker)
            self.spawn(worker)
            workers.append((worker, ready))
        for worker, ready in workers:
            self.wait_ready(worker, ready)
        for i, cam in enumerate(self.cfg.cameras):
            camera = Child(f"camera:{cam.id}", "edge.camera:camera_main", (cfg_dict, i, input_hw, lvl))
            self.children.append(camera)
            self.spawn(camera)

    # -- watching -----------------------------------------------------------------------
    def watch_once(self, status: zmq.Socket) -> None:
        now = time.monotonic()
        self.read_errors()
        for child in self.children:
            proc = child.process
            if proc is not None and not proc.is_alive():
                code = proc.exitcode
                proc.join(0)
                child.process = None
                uptime = now - child.started_at
                if code == 0 and child.role.startswith("camera:"):
                    child.finished = True
                    log.info("%s: stream ended", child.role)
                    continue
                if code == EXIT_MODEL_LOAD and child.role.startswith("worker:"):
                    # restarting would load the same model and fail again: a crash loop
                    child.finished, self.stopping = True, True
                    self.failure = self.failure or f"{child.role}: exited with code {code} (model not loaded)"
                    continue
                if uptime > 30:
                    child.backoff.reset()  # it ran fine for a while: this is a fresh failure
                delay = child.backoff.next_delay()
                child.restart_at = now + delay
                log.warning(
                    "%s exited (code %s) after %.1f s; restarting in %.1f s", child.role, code, uptime, delay
                )
            elif proc is None and not child.finished and now >= child.restart_at:
                child.restarts += 1
                if child.role.startswith("worker:"):
                    # A new name, and the dead ones' (newest first): the router then counts what
                    # the dead worker held lost as soon as this one joins, not after the heartbeat
                    # timeout, also when a restart in between died before it joined.
                    *start, dead, earlier = child.args  # start: (cfg, index, log level, ...)
                    child.args = (*start, worker_name(start[1]), (dead, *earlier)[: protocol.REPLACES_MAX])
                self.spawn(child)
                self.not_ready.pop(child.role, None)
        header = {
            "t": "supervisor",
            "not_ready": [f"{role}: {msg}" for role, msg in self.not_ready.items()],
            "restarts": {c.role: c.restarts for c in self.children if c.restarts},
            "pids": {c.role: c.process.pid for c in self.children if c.process is not None},
        }
        with contextlib.suppress(zmq.Again):
            status.send_multipart(protocol.seal(self.cfg.key, header), zmq.NOBLOCK)

    # -- shutdown --------------------------------------------------------------------------
    def stop_group(self, prefix: str, deadline: float) -> bool:
        """SIGTERM the children whose role starts with ``prefix``; kill those still alive at ``deadline``."""
        group = [c for c in self.children if c.role.startswith(prefix) and c.process is not None]
        for child in group:
            if child.process.is_alive():
                child.process.terminate()
        timeout_s = max(0.0, deadline - time.monotonic())
        clean = True
        for child in group:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log.error("%s did not stop within %.1f s; its stack, then kill", child.role, timeout_s)
                dump_stacks(child.process)
                child.process.kill()
                child.process.join(1.0)
                clean = False
        return clean

    def shutdown(self, quiet: bool = False) -> int:
        marks = stage_marks(self.cfg.shutdown_timeout_s)
        if not quiet:
            log.info("stopping: cameras, then draining for at most %.1f s", marks[-1])
        # One overall bound, split in stages: each stage ends by its mark or is killed.
        start = time.monotonic()
        clean = True
        roles = ("camera:", "router", "worker:", "collector")
        for prefix, mark, floor in zip(roles, marks, STAGE_FLOOR_S, strict=True):
            # a stage that starts late, since the one before had to be killed, still gets its floor
            deadline = max(start + mark, time.monotonic() + floor)
            if prefix == "collector":
                self.collector_kill_at.value = deadline
            clean &= self.stop_group(prefix, deadline)
        # last, so that the collector's final status reaches the plant's systems
        clean &= self.stop_group("sink:", time.monotonic() + SINK_STOP_S)
        return EXIT_OK if clean else EXIT_FORCED

    def request_stop(self, *_: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        input_hw = self.preflight()
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if not self.cfg.run_dir:
            make_run_dir(self.cfg)
        if not self.cfg.line_key:
            self.cfg.line_key = secrets.token_hex(32)  # this run's key: see edge/protocol.py
        zctx = zmq.Context()
        status = sockets.make_socket(zctx, zmq.PUSH, sndhwm=10, linger_ms=0)
        keys = line_keys(self.cfg)
        try:
            try:
                self.start(input_hw)
            except LinesideError:
                self.shutdown(quiet=True)
                raise
            sockets.connect(status, self.cfg.endpoint("results"), keys)
            log.info(
                "line %s running: %d camera(s), %d worker(s), model %s; results on %s",
                self.cfg.name,
                len(self.cfg.cameras),
                self.cfg.workers.count,
                self.cfg.resolve(self.cfg.model.package),
                self.cfg.endpoint("publish"),
            )
            end = time.monotonic() + self.duration if self.duration else None
            cameras = [c for c in self.children if c.role.startswith("camera:")]
            while not self.stopping:
                self.watch_once(status)
                if end is not None and time.monotonic() >= end:
                    break
                if all(c.finished for c in cameras) or self.ledger("ended_cameras") >= len(cameras):
                    log.info("every camera's stream has ended; deciding what they sent")
                    self.drain(status, len(cameras))
                    break
                time.sleep(0.2)
            code = self.shutdown()
            self.read_errors()  # the failing worker's own line may have come after its exit
            if self.failure:
                msg = f"{self.failure} (the line stopped: a restarted worker would fail the same way)"
                raise LineStopped(msg)
            return self.exit_code(code)
        finally:
            sockets.close_all(zctx, status)
            shutil.rmtree(self.cfg.run_dir, ignore_errors=True)

    def drain(self, status: zmq.Socket, cameras: int) -> None:
        """After the natural end of every stream: wait until every frame is decided or dropped,
        for as long as that makes progress (a frame settled, or a worker computing); the stall
        bound is ``shutdown_timeout_s`` without either, and never shorter than the time the
        busy signal takes to arrive (worker heartbeat, then router stats)."""
        stall = max(self.cfg.shutdown_timeout_s, DRAIN_STALL_FLOOR_S)
        settled, progress_at = self.ledger("settled"), time.monotonic()
        while not self.stopping:
            self.watch_once(status)
            if self.ledger("final_cameras") >= cameras and self.ledger("in_flight") <= 0:
                return
            if self.ledger("settled") != settled or self.ledger("busy_workers") > 0:
                settled, progress_at = self.ledger("settled"), time.monotonic()
            elif time.monotonic() - progress_at > stall:
                log.error(
                    "nothing decided for %.0f s with %d frame(s) in flight; stopping",
                    stall,
                    int(self.ledger("in_flight")),
                )
                return
            time.sleep(0.05)

    def exit_code(self, code: int) -> int:
        """The shutdown's code, or EXIT_LOST when frames of a lossless camera were lost."""
        lost = int(self.ledger("lost"))
        if lost:
            log.error(
                "%d frame(s) of lossless camera(s) were not decided (see the summary's 'lost'); exit code %d",
                lost,
                EXIT_LOST,
            )
        if code == EXIT_OK and lost:
            return EXIT_LOST
        return code
