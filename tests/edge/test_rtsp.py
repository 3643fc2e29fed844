"""Live cameras against a real RTSP server (GStreamer's gst-rtsp-server, not our code).

Each frame the server makes carries the wall-clock time it was made (tests/edge/rtsp.py),
so the tests can tell how old a picture is when the line gets it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge.sources.opencv_source import OpenCvSource
from tests.conftest import need_peer
from tests.edge.daemon import check_ledger, finish, free_port, line_config, metric, readyz, scrape, start_line
from tests.edge.rtsp import RtspServer, missing_reason, stamp_of

pytestmark = pytest.mark.slow


@pytest.fixture
def rtsp():
    """``rtsp(fps=, size=)`` starts a real RTSP server on a free port; all are killed at the end."""
    need_peer(missing_reason())
    servers: list[RtspServer] = []

    def start(fps: int = 10, size: int = 256) -> RtspServer:
        servers.append(RtspServer(free_port(), fps, size).start())
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


def test_a_camera_slower_than_the_stream_stays_live(rtsp) -> None:
    """A 10 fps stream read at 3 fps: every frame handed over is the newest one, and its
    ``capture_ts`` is when it was captured. (Read frame by frame, the decoder's buffer made
    the pictures fall 0.7 s further behind every second: 5 s behind after 8 s.)"""
    server = rtsp(fps=10)
    src = OpenCvSource(server.url, open_timeout_s=10, read_timeout_s=3)
    src.open()
    try:
        ages, ts_errors = [], []
        end = time.monotonic() + 8
        while time.monotonic() < end:
            frame = src.read()
            now = time.time()
            made = stamp_of(frame.image, now)
            ages.append(now - made)
            ts_errors.append(frame.capture_ts - made)
            time.sleep(1 / 3)
    finally:
        src.close()
    print(f"frame age when read: first {ages[0]:.2f} s, max {max(ages):.2f} s over {len(ages)} reads")
    # Encoding, RTP and decoding take ~0.2 s here; the old reader was 5 s behind by the end.
    assert len(ages) >= 15
    assert max(ages) < 1.5, ages
    assert sum(ages[-5:]) / 5 < sum(ages[:5]) / 5 + 0.5, ages  # not falling behind
    assert max(abs(e) for e in ts_errors) < 1.0, ts_errors  # ts is the capture, not the read


def rtsp_camera(url: str) -> dict:
    return {
        "id": "gate",
        "source": "opencv",
        "fps": 3,
        "policy": "latest",
        "open_timeout_s": 3.0,
        "read_timeout_s": 1.0,
        "reconnect_initial_s": 0.5,
        "reconnect_max_s": 2.0,
        "silent_after_s": 3.0,
        "options": {"uri": url},
    }


def test_an_rtsp_outage_shows_at_once_backs_off_and_resumes(rtsp, line_package: Path, tmp_path: Path) -> None:
    """The server is killed: within read_timeout_s + 1 s the camera reports NO_DECISION
    ("camera down") on its own results topic and /readyz says not ready; NO_DECISION keeps
    coming at the camera's rate while it is down; the camera reconnects with backoff when
    the server is back, and decisions resume. (Before: buffered frames for ~35 s.)"""
    server = rtsp(fps=10)
    cam = rtsp_camera(server.url)
    cfg = line_config(tmp_path, line_package, [cam], shutdown_timeout_s=6)
    port = cfg["metrics"]["port"]
    daemon, sub = start_line(tmp_path, cfg)
    try:
        decided = lambda s, after=0.0: [  # noqa: E731
            r for r in s.results if r["decision"] != "NO_DECISION" and r["ts"] > after
        ]
        assert sub.wait_for(lambda s: len(decided(s)) >= 6, 60), daemon.output()
        assert sub.wait_for(lambda _: readyz(port)["ready"], 10), readyz(port)

        server.kill()
        killed = time.time()
        down = lambda s: [r for r in s.results if r["reason"].startswith("camera down")]  # noqa: E731
        assert sub.wait_for(lambda s: down(s), 10), daemon.output()
        first_down = min(r["ts"] for r in down(sub))
        last_picture = max(r["ts"] for r in decided(sub))
        assert sub.wait_for(lambda _: not readyz(port)["ready"], 10)
        not_ready_seen = time.time()
        reasons = readyz(port)["reasons"]
        time.sleep(4)  # down for a while: NO_DECISION at the camera's rate (3 fps)
        during = [r for r in down(sub) if r["ts"] < time.time() - 0.5]

        server.start()
        back = time.time()
        assert sub.wait_for(lambda s: len(decided(s, after=back)) >= 3, 30), daemon.output()
        assert sub.wait_for(lambda _: readyz(port)["ready"], 15), readyz(port)
        text = scrape(port)
    finally:
        daemon.terminate()
    code = finish(daemon, sub)
    outage = first_down - killed
    print(
        f"outage reported {outage:.2f} s after the kill (read_timeout_s 1 s); /readyz false after "
        f"{not_ready_seen - killed:.2f} s; {len(during)} NO_DECISION while down"
    )
    assert outage <= cam["read_timeout_s"] + 1.0, outage
    assert last_picture < killed + 0.5, "pictures from before the outage kept coming after it"
    # /readyz is polled; seeing it flip takes the poll's own time on top of the rule.
    assert not_ready_seen - killed <= cam["read_timeout_s"] + 1.0 + 1.0
    assert any("camera gate down" in r for r in reasons), reasons
    down_span = max(r["ts"] for r in during) - first_down
    assert len(during) >= 0.5 * cam["fps"] * down_span, (len(during), down_span)
    assert all(r["decision"] == "NO_DECISION" and r["cam"] == "gate" for r in during)
    assert metric(text, "lineside_camera_disconnects_total", camera="gate") == 1
    assert metric(text, "lineside_camera_reconnects_total", camera="gate") >= 1
    assert metric(text, "lineside_camera_gap_seconds_total", camera="gate") > 3
    assert "gate: cannot open" in daemon.output()  # it kept trying while the server was gone
    assert code == 0, daemon.output()
    check_ledger(daemon.summary())
