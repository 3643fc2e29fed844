"""The /metrics page against programs nobody here wrote: `promtool check metrics` lints it,
and a real Prometheus server scrapes it and computes ``increase()`` over its counters.
The page's metric families are exactly the ones docs/daemon.md lists, with their types."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import MODEL_SIZE, need_peer
from tests.edge.daemon import finish, free_port, line_config, metric, scrape, start_line, synthetic_camera

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "daemon.md"
NEEDS = "install Debian's prometheus package (.ci/run does)"


def documented() -> dict[str, str]:
    """metric name -> type, from the table in docs/daemon.md."""
    rows = re.findall(r"^\| `(lineside_[a-z_]+)` \| (\w+) \|", DOC.read_text(), re.M)
    return dict(rows)


def families(text: str) -> dict[str, str]:
    """metric family -> type, from the page's # TYPE lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


class Prometheus:
    """A real Prometheus server scraping one target every second."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs:\n  - job_name: line\n    static_configs:\n      - targets: ['{target}']\n"
        )
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.load(r)["data"]["result"]
        except OSError:
            return []

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_metrics_pass_promtool_match_the_docs_and_work_in_prometheus(
    line_package: Path, tmp_path: Path
) -> None:
    if shutil.which("promtool") is None or shutil.which("prometheus") is None:
        need_peer(f"promtool/prometheus not found: {NEEDS}")
    flaky = synthetic_camera("flaky", size=MODEL_SIZE, fps=10, seed=91, disconnect_at=15)
    flaky.update(reconnect_initial_s=0.2)
    live = synthetic_camera("live", size=MODEL_SIZE, fps=10, seed=92, policy="latest")
    cfg = line_config(tmp_path, line_package, [flaky, live])
    port = cfg["metrics"]["port"]
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{port}")
    daemon, sub = start_line(tmp_path, cfg)
    try:
        assert sub.wait_for(lambda s: len(s.results) >= 60, 60), daemon.output()
        decided = {"flaky": 0.0}

        def increased(_: object) -> bool:
            rows = prometheus.query(
                'sum by (camera) (increase(lineside_decisions_total{camera="flaky"}[30s]))'
            )
            decided["flaky"] = float(rows[0]["value"][1]) if rows else 0.0
            return decided["flaky"] > 10

        assert sub.wait_for(increased, 30), "Prometheus never saw the decisions grow"
        captured = prometheus.query("sum(rate(lineside_frames_captured_total[10s]))")
        disconnects = prometheus.query('lineside_camera_disconnects_total{camera="flaky"}')
        page = scrape(port)
    finally:
        prometheus.stop()
        daemon.terminate()
    assert finish(daemon, sub) == 0, daemon.output()
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=page, capture_output=True, text=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert families(page) == documented(), set(families(page).items()) ^ set(documented().items())
    # One page adds up (docs/daemon.md), taken while frames were coming and going.
    for cam in ("flaky", "live"):
        decisions = sum(
            float(v)
            for v in re.findall(rf'^lineside_decisions_total{{camera="{cam}",.*}} (\S+)$', page, re.M)
        )
        drops = sum(
            float(v) for v in re.findall(rf'^lineside_drops_total{{camera="{cam}",.*}} (\S+)$', page, re.M)
        )
        late = metric(page, "lineside_late_decisions_total", camera=cam)
        in_flight = metric(page, "lineside_frames_in_flight", camera=cam)
        frames = metric(page, "lineside_frames_captured_total", camera=cam)
        assert frames == decisions + drops - late + in_flight > 0, (cam, frames, decisions, drops, in_flight)
    fps = float(captured[0]["value"][1])
    print(f"Prometheus: increase() {decided['flaky']:.0f} decisions of flaky, rate() {fps:.1f} frames/s")
    assert 0 < fps < 40  # two cameras at 10 fps
    assert float(disconnects[0]["value"][1]) == 1
