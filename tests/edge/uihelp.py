"""A harness for the `lineside ui` tests: a real line, and the UI as its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.edge.daemon import ROOT, Daemon, free_port, line_config, synthetic_camera


@dataclass
class Ui:
    """`lineside ui` in a subprocess, on a free loopback port."""

    config: Path
    tmp: Path
    port: int = 0
    extra: tuple[str, ...] = ()
    env: dict[str, str] | None = None

    def start(self, wait_s: float = 30.0) -> Ui:
        self.port = self.port or free_port()
        argv = [
            sys.executable,
            "-m",
            "edge.cli",
            "ui",
            "--config",
            str(self.config),
            "--port",
            str(self.port),
        ]
        self.log = open(self.tmp / f"ui-{self.port}.log", "w")  # noqa: SIM115 (closed in stop)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        self.proc = subprocess.Popen(
            [*argv, *self.extra], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"lineside ui exited with {self.proc.returncode}: {self.output()}")
            try:
                self.get("/healthz", auth=("op", "pw") if "--user" in self.extra else None)
                return self
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"lineside ui did not answer within {wait_s} s: {self.output()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, auth: tuple[str, str] | None = None, timeout: float = 10) -> Any:
        return json.loads(self.request(path, auth=auth, timeout=timeout)[2])

    def request(
        self,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) of one real HTTP request; error statuses
        are returned too."""
        headers = dict(headers or {})
        if auth is not None:
            import base64

            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as err:
            if path == "/healthz":
                raise
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def output(self) -> str:
        return (self.tmp / f"ui-{self.port}.log").read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate()`` until it returns something true; fail naming ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = predicate()
        except (OSError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def wait_json(ui: Ui, path: str, good: Any, timeout: float, what: str) -> Any:
    """GET ``path`` until ``good(answer)``; the answer."""
    return wait_until(lambda: (lambda answer: answer if good(answer) else None)(ui.get(path)), timeout, what)


def start_line_and_ui(
    tmp: Path, package: Path, ui_extra: tuple[str, ...] = (), curve: bool = False
) -> tuple[Daemon, Ui]:
    """Two synthetic cameras at the model's size, and the UI on the line's config; ``curve``:
    the line has CURVE keys (docs/security.md), so the UI subscribes as a CURVE client."""
    from tests.conftest import MODEL_SIZE

    cams = [synthetic_camera(cam, size=MODEL_SIZE, fps=6) for cam in ("cam1", "cam2")]
    over: dict[str, Any] = {"name": "uitest"}
    if curve:
        from edge.keys import make_line_keys

        make_line_keys(tmp / "keys")
        over["security"] = {"keys": str(tmp / "keys")}
    cfg = line_config(tmp, package, cams, **over)
    # the UI's port is drawn apart from the line's: a port the line was handed and has not bound
    # yet (it is still importing) may come back from the kernel, and then one of the two fails
    line_ports = {int(url.rsplit(":", 1)[1]) for url in cfg["endpoints"].values()} | {cfg["metrics"]["port"]}
    ui_port = next(port for port in iter(free_port, None) if port not in line_ports)
    daemon = Daemon(cfg, tmp).start()
    try:
        ui = Ui(tmp / "line.yaml", tmp, port=ui_port, extra=ui_extra).start()
    except BaseException:
        daemon.kill()
        raise
    return daemon, ui


def decided(state: dict) -> int:
    """The decisions the line has made since it started, as the UI's state counts them."""
    return sum(state["since_start"][d] for d in ("PASS", "FAIL", "NO_DECISION"))


def logs_of(daemon: Daemon, ui: Ui, lines: int = 40) -> str:
    """The last ``lines`` of the line's and the UI's logs, for a failure's message."""
    exit_code = daemon.proc.poll() if daemon.proc else None
    parts = [f"line ({'running' if exit_code is None else f'exited with {exit_code}'}):"]
    parts += daemon.output().splitlines()[-lines:]
    parts += ["ui:", *ui.output().splitlines()[-lines:]]
    return "\n".join(parts)


def wait_for_first_decisions(daemon: Daemon, ui: Ui, timeout: float = 90) -> dict:
    """The UI's state once the line has decided a frame. The line's own start (its processes, the
    model's load) is slow on a loaded machine and is not what a UI test checks; if it never
    decides, the failure carries both logs."""

    def first_decisions() -> dict | None:
        if daemon.proc is not None and daemon.proc.poll() is not None:
            raise AssertionError("the line stopped before it decided a frame")
        state = ui.get("/api/state")
        return state if decided(state) > 0 else None

    try:
        return wait_until(first_decisions, timeout, "the line's first decisions")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{logs_of(daemon, ui)}") from None


def stop_line(daemon: Daemon) -> None:
    if daemon.proc and daemon.proc.poll() is None:
        daemon.terminate()
        try:
            daemon.wait(30)
        finally:
            daemon.kill()
