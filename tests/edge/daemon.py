"""A harness for tests that run the real daemon: `lineside run` as a subprocess,
a real ZeroMQ subscriber on its publish socket, and its SQLite decision log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
import zmq

from tests.conftest import MODEL_CLASS

ROOT = Path(__file__).resolve().parents[2]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: each socket stays bound until all are drawn, since
    the kernel may hand a port that was just let go to the next bind (a config once got the same
    port for two endpoints on a loaded machine)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def line_config(tmp: Path, package: Path, cameras: list[dict], **over: Any) -> dict:
    """A line config with tcp endpoints on free loopback ports and sinks under ``tmp``."""
    frames, work, results, publish, metrics = free_ports(5)
    cfg = {
        "name": "test",
        "model": {"package": str(package), "backend": "onnxruntime", "threads": 1},
        "cameras": cameras,
        "workers": {"count": 1, "max_batch": 4, "max_wait_ms": 20, "heartbeat_timeout_s": 3},
        "endpoints": {
            "frames": f"tcp://127.0.0.1:{frames}",
            "work": f"tcp://127.0.0.1:{work}",
            "results": f"tcp://127.0.0.1:{results}",
            "publish": f"tcp://127.0.0.1:{publish}",
        },
        "sinks": {
            "decision_log": str(tmp / "decisions.sqlite"),
            "ng_store": str(tmp / "ng"),
            "ng_store_max_mb": 16,
        },
        "metrics": {"port": metrics},
        "status_interval_s": 1,
        "shutdown_timeout_s": 8,
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def synthetic_camera(
    cam_id: str, *, size: int, fps: float = 8, policy: str = "lossless", **options: Any
) -> dict:
    return {
        "id": cam_id,
        "source": "synthetic",
        "fps": fps,
        "policy": policy,
        "max_age_ms": 0,
        "options": {"size": size, "class_id": MODEL_CLASS, "defect_rate": 0.5, **options},
    }


@dataclass
class Subscriber:
    """Collects every published result and status in a thread (real SUB socket)."""

    endpoint: str
    #: (server public key, client public key, client secret key): connect as a CURVE client
    curve: tuple[bytes, bytes, bytes] | None = None
    results: list[dict] = field(default_factory=list)
    statuses: list[dict] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Subscriber:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        if self.curve is not None:
            self.sock.curve_serverkey, self.sock.curve_publickey, self.sock.curve_secretkey = self.curve
        self.sock.connect(self.endpoint)  # before the daemon binds: no slow-joiner loss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(100):
                continue
            parts = self.sock.recv_multipart()
            header = json.loads(parts[1])
            if parts[0].startswith(b"result."):
                self.results.append(header)
            elif parts[0] == b"status":
                self.statuses.append(header)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate(self):
                return True
            time.sleep(0.1)
        return False

    def pids(self, *roles: str, timeout: float = 30) -> dict[str, int]:
        """The pids of the line's processes, from the latest status that names every one of ``roles``.

        A status can come before the supervisor's first report reaches the collector (its
        ``processes`` are empty then), so a test that kills a process waits for its pid here."""

        def named(s: Subscriber) -> bool:
            return bool(s.statuses) and all(role in s.statuses[-1].get("processes", {}) for role in roles)

        assert self.wait_for(named, timeout), f"no status named {roles}; last: {self.statuses[-1:]}"
        return dict(self.statuses[-1]["processes"])


@dataclass
class Daemon:
    """`lineside run` in a subprocess."""

    config: dict
    tmp: Path
    duration: float = 0.0
    proc: subprocess.Popen | None = None

    @property
    def summary_path(self) -> Path:
        return self.tmp / "summary.json"

    def start(self) -> Daemon:
        path = self.tmp / "line.yaml"
        path.write_text(yaml.safe_dump(self.config))
        argv = [
            sys.executable,
            "-m",
            "edge.cli",
            "run",
            "--config",
            str(path),
            "--summary",
            str(self.summary_path),
        ]
        if self.duration:
            argv += ["--duration", str(self.duration)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log = open(self.tmp / "daemon.log", "w")  # noqa: SIM115 (closed in wait)
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        return self

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        finally:
            self.log.close()

    def output(self) -> str:
        return (self.tmp / "daemon.log").read_text()

    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text())

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a `lineside` command printed, after checking that it stopped with exit 2
    and printed nothing else (no traceback; for `run`, no process of the line started, since
    each logs as it comes up)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lineside: error: ")
    return lines[0]


def check_ledger(summary: dict) -> None:
    """The accounting invariant at the end of a run: nothing left in flight, nothing lost."""
    for cam, led in summary["cameras"].items():
        assert sum(led["dropped_by_reason"].values()) == led["dropped"], (cam, led)
        assert led["captured"] == led["decided"] + led["dropped"] + led["in_flight"], (cam, led)
        assert led["in_flight"] == 0, (cam, led)
    totals = summary["totals"]
    assert totals["captured"] == totals["decided"] + totals["dropped"] + totals["in_flight"], totals


def start_line(tmp: Path, cfg: dict, duration: float = 0.0) -> tuple[Daemon, Subscriber]:
    """A subscriber first (no slow-joiner loss), then the daemon."""
    sub = Subscriber(cfg["endpoints"]["publish"]).start()
    return Daemon(cfg, tmp, duration=duration).start(), sub


def finish(daemon: Daemon, sub: Subscriber, timeout: float = 60) -> int:
    """Wait for the daemon to exit (killing it past ``timeout``) and for its final status."""
    try:
        code = daemon.wait(timeout)
    finally:
        daemon.kill()
        sub.wait_for(lambda s: any(st.get("final") for st in s.statuses), 5)
        sub.close()
    return code


def readyz(port: int) -> dict:
    """The line's /readyz answer (``ready`` and ``reasons``), 200 or 503."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as err:  # 503 carries the reasons
        assert err.code == 503
        return json.load(err)


def scrape(port: int) -> str:
    """The line's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text page (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0
