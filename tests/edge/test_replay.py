"""Replay cameras: an image folder and a video file, both finite. Every frame is
decided (lossless), and the line stops by itself when both streams have ended."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from converter import synthetic
from tests.conftest import MODEL_CLASS, MODEL_SIZE
from tests.edge.daemon import check_ledger, finish, line_config, start_line

pytestmark = pytest.mark.slow


def test_folder_and_video_replay_decide_every_frame_then_stop(trained_package: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "stills"
    folder.mkdir()
    for i in range(10):
        image, _, _ = synthetic.render(rng, 2 * MODEL_SIZE, MODEL_CLASS, defective=bool(i % 2))
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)  # twice the model size: resized
    (folder / "zz-corrupt.png").write_bytes(b"\x89PNG not really")
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (MODEL_SIZE + 40, MODEL_SIZE))
    for i in range(12):
        image, _, _ = synthetic.render(
            rng, (MODEL_SIZE, MODEL_SIZE + 40), MODEL_CLASS, defective=bool(i % 3 == 0)
        )
        writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))  # a colour camera
    writer.release()
    cameras = [
        {
            "id": "stills",
            "source": "folder",
            "fps": 20,
            "policy": "lossless",
            "max_age_ms": 0,
            "options": {"path": str(folder)},
        },
        {
            "id": "video",
            "source": "opencv",
            "fps": 20,
            "policy": "lossless",
            "max_age_ms": 0,
            "roi": [20, 0, MODEL_SIZE, MODEL_SIZE],
            "options": {"uri": str(video)},
        },
    ]
    cfg = line_config(tmp_path, trained_package, cameras)
    daemon, sub = start_line(tmp_path, cfg)  # no --duration: it must stop on its own
    code = finish(daemon, sub, timeout=90)
    out = daemon.output()
    assert code == 0, out
    assert "every camera's stream has ended" in out
    by_cam = {cam: sorted(r["seq"] for r in sub.results if r["cam"] == cam) for cam in ("stills", "video")}
    assert by_cam == {"stills": list(range(10)), "video": list(range(12))}, by_cam
    assert all(r["decision"] in ("PASS", "FAIL") for r in sub.results)
    assert all(r["mask_shape"] == [MODEL_SIZE, MODEL_SIZE] for r in sub.results)
    check_ledger(daemon.summary())


def write_recordings(tmp_path: Path, n: int, size: int) -> tuple[Path, Path]:
    """A folder of ``n`` PNG stills and an ``n``-frame lossless video, ``size`` pixels square."""
    rng = np.random.default_rng(9)
    folder = tmp_path / "stills"
    folder.mkdir()
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 10, (size, size))
    for i in range(n):
        image, _, _ = synthetic.render(rng, size, MODEL_CLASS, defective=bool(i % 3 == 0))
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
        writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    writer.release()
    return folder, video


def replay_cameras(folder: Path, video: Path) -> list[dict]:
    # Lossless without max_age_ms: every frame is decided, however long it waits.
    return [
        {
            "id": "stills",
            "source": "folder",
            "fps": 0,
            "policy": "lossless",
            "fit": "tile",
            "options": {"path": str(folder)},
        },
        {
            "id": "video",
            "source": "opencv",
            "fps": 0,
            "policy": "lossless",
            "fit": "tile",
            "options": {"uri": str(video)},
        },
    ]


def test_a_replay_of_n_frames_ends_with_n_decisions_whatever_the_shutdown_timeout(
    trained_package: Path, tmp_path: Path
) -> None:
    """48 frames per camera, each cut into 16 model tiles: the line needs far longer than the
    1 s ``shutdown_timeout_s`` to decide them, and still decides every one, then exits 0.
    (Before: the natural end got only ``shutdown_timeout_s`` to drain, and the tail was
    dropped as shutdown with exit code 0.)"""
    n = 48
    folder, video = write_recordings(tmp_path, n, 4 * MODEL_SIZE)
    cfg = line_config(tmp_path, trained_package, replay_cameras(folder, video), shutdown_timeout_s=1)
    started = time.monotonic()
    daemon, sub = start_line(tmp_path, cfg)
    code = finish(daemon, sub, timeout=240)
    took = time.monotonic() - started
    out = daemon.output()
    print(f"{2 * n} tiled frames replayed and decided in {took:.1f} s (shutdown_timeout_s: 1)")
    assert code == 0, out
    by_cam = {cam: sorted(r["seq"] for r in sub.results if r["cam"] == cam) for cam in ("stills", "video")}
    assert by_cam == {"stills": list(range(n)), "video": list(range(n))}, by_cam
    summary = daemon.summary()
    check_ledger(summary)
    assert summary["totals"]["dropped"] == 0 and summary["lost"] == {}, summary["totals"]
    assert took > 4 * cfg["shutdown_timeout_s"], "the line was not slower than the bound: no proof"


def test_a_replay_that_loses_frames_exits_non_zero(trained_package: Path, tmp_path: Path) -> None:
    """No worker ever comes: nothing is decided, the stall bound ends the drain, and the exit
    code says the lossless frames were lost (a script must be able to trust exit 0)."""
    folder, video = write_recordings(tmp_path, 12, MODEL_SIZE)
    cfg = line_config(
        tmp_path, trained_package, replay_cameras(folder, video), workers={"count": 0}, shutdown_timeout_s=2
    )
    daemon, sub = start_line(tmp_path, cfg)
    code = finish(daemon, sub, timeout=120)
    summary = daemon.summary()
    check_ledger(summary)
    assert code == 4, daemon.output()
    assert sum(summary["lost"].values()) == 24 == summary["totals"]["dropped"], summary["lost"]
    assert "were not decided" in daemon.output()
