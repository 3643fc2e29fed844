"""Scale past one box: a worker started on its own (`lineside worker --connect`) attaches
to a running line over tcp and shares its load. Here both run on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import MODEL_SIZE
from tests.edge.daemon import ROOT, Daemon, Subscriber, check_ledger, line_config, synthetic_camera

pytestmark = pytest.mark.slow


def test_remote_worker_over_tcp_decides_the_line(trained_package: Path, tmp_path: Path) -> None:
    cams = [synthetic_camera("cam1", size=MODEL_SIZE, fps=10, seed=21)]
    # No local worker: every decision must come from the worker on the "other box".
    cfg = line_config(tmp_path, trained_package, cams, workers={"count": 0})
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
