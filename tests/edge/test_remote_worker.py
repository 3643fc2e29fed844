"""Scale past one box: a worker started on its own (`lineside worker --connect`) attaches
to a running line over tcp and shares its load. Here both run on loopback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import MODEL_SIZE
from tests.edge.daemon import ROOT, Daemon, Subscriber, check_ledger, free_port, line_config, synthetic_camera

pytestmark = pytest.mark.slow


def test_remote_worker_over_tcp_decides_the_line(line_package: Path, tmp_path: Path) -> None:
    cams = [synthetic_camera("cam1", size=MODEL_SIZE, fps=10, seed=21)]
    # No local worker: every decision must come from the worker on the "other box".
    cfg = line_config(tmp_path, line_package, cams, workers={"count": 0})
    sub = Subscriber(cfg["endpoints"]["publish"]).start()
    daemon = Daemon(cfg, tmp_path).start()
    worker_cfg = tmp_path / "remote.yaml"
    worker_cfg.write_text(yaml.safe_dump(cfg))
    remote = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "worker",
            "--config",
            str(worker_cfg),
            "--connect",
            cfg["endpoints"]["work"],
            "--results",
            cfg["endpoints"]["results"],
            "--index",
            "7",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert sub.wait_for(lambda s: len(s.results) >= 30, 90), daemon.output()
    finally:
        # The line first, so that the remote worker decides what the line still holds.
        daemon.terminate()
        code = daemon.wait(60)
        remote.terminate()
        remote_out = remote.communicate(timeout=30)[0]
        sub.wait_for(lambda s: any(st.get("final") for st in s.statuses), 5)
        sub.close()
    assert code == 0, daemon.output()
    assert remote.returncode == 0, remote_out
    assert {r["worker"] for r in sub.results} == {next(iter(sub.results))["worker"]}
    assert "-w7-" in sub.results[0]["worker"]
    assert "joined" in daemon.output()
    check_ledger(daemon.summary())


def worker_argv(config: Path, timeout_s: float) -> list[str]:
    work, results = free_port(), free_port()  # nothing listens there
    return [
        sys.executable,
        "-m",
        "edge.cli",
        "worker",
        "--config",
        str(config),
        "--connect",
        f"tcp://127.0.0.1:{work}",
        "--results",
        f"tcp://127.0.0.1:{results}",
        "--connect-timeout",
        str(timeout_s),
    ]


def test_a_worker_with_no_line_says_so_stops_on_ctrl_c_and_gives_up(
    line_package: Path, tmp_path: Path
) -> None:
    """(Before: it waited silently forever and ignored Ctrl-C.)"""
    cfg = line_config(tmp_path, line_package, [synthetic_camera("cam1", size=MODEL_SIZE)])
    config = tmp_path / "line.yaml"
    config.write_text(yaml.safe_dump(cfg))
    # No line at all: one clear line and exit 2 once the connect timeout has passed.
    done = subprocess.run(worker_argv(config, 3), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "waiting for the line" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("lineside: error: no line answered within 3 s") and "--connect" in last, last
    assert "Traceback" not in done.stderr
    # Ctrl-C while it waits: it stops at once.
    proc = subprocess.Popen(worker_argv(config, 60), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "waiting for the line" in line:
                break
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(15)
        took = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
    assert code == 0 and took < 5, (code, took)
