"""Replay cameras: an image folder and a video file, both finite. Every frame is
decided (lossless), and the line stops by itself when both streams have ended."""

from __future__ import annotations

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
