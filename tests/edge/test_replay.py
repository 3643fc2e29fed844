"""Replay cameras: an image folder and a video file, both finite. Every frame is
decided (lossless), and the line stops by itself when both streams have ended."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from converter import synthetic
from tests.conftest import MODEL_CLASS, MODEL_SIZE
from tests.edge.daemon import check_ledger, finish, line_config, start_line

pytestmark = pytest.mark.slow


def test_folder_and_video_replay_decide_every_frame_then_stop(line_package: Path, tmp_path: Path) -> None:
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
    cfg = line_config(tmp_path, line_package, cameras)
    daemon, sub = start_line(tmp_path, cfg)  # no --duration: it must stop on its own
    code = finish(daemon, sub, timeout=90)
    out = daemon.output()
    assert code == 0, out
    assert "every camera's stream has ended" in out
    by_cam = {cam: sorted(r["seq"] for r in sub.results if r["cam"] == cam) for cam in ("stills", "video")}
    assert by_cam == {"stills": list(range(11)), "video": list(range(12))}, by_cam
    # The corrupt file, last in name order, is a NO_DECISION of its own, not a silent gap.
    [corrupt] = [r for r in sub.results if r["decision"] == "NO_DECISION"]
    assert (corrupt["cam"], corrupt["seq"]) == ("stills", 10)
    assert corrupt["reason"].startswith("unreadable image: zz-corrupt.png (OpenCV could not decode it")
    decided = [r for r in sub.results if r is not corrupt]
    assert all(r["decision"] in ("PASS", "FAIL") for r in decided)
    assert all(r["mask_shape"] == [MODEL_SIZE, MODEL_SIZE] for r in decided)
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
    line_package: Path, tmp_path: Path
) -> None:
    """96 frames per camera, each cut into 16 model tiles: the line needs far longer than the
    1 s ``shutdown_timeout_s`` to decide them, and still decides every one, then exits 0.
    (Before: the natural end got only ``shutdown_timeout_s`` to drain, and the tail was
    dropped as shutdown with exit code 0.) With 48 the run took 5.4 s on this 2-core box, and
    3.9 s on the oldest supported versions: under the 4 s it must take to prove anything."""
    n = 96
    folder, video = write_recordings(tmp_path, n, 4 * MODEL_SIZE)
    cfg = line_config(tmp_path, line_package, replay_cameras(folder, video), shutdown_timeout_s=1)
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


def test_a_replay_that_loses_frames_exits_non_zero(line_package: Path, tmp_path: Path) -> None:
    """No worker ever comes: nothing is decided, the stall bound ends the drain, and the exit
    code says the lossless frames were lost (a script must be able to trust exit 0)."""
    folder, video = write_recordings(tmp_path, 12, MODEL_SIZE)
    cfg = line_config(
        tmp_path, line_package, replay_cameras(folder, video), workers={"count": 0}, shutdown_timeout_s=2
    )
    daemon, sub = start_line(tmp_path, cfg)
    code = finish(daemon, sub, timeout=120)
    summary = daemon.summary()
    check_ledger(summary)
    assert code == 4, daemon.output()
    assert sum(summary["lost"].values()) == 24 == summary["totals"]["dropped"], summary["lost"]
    assert "were not decided" in daemon.output()


def write_mixed_folder(folder: Path) -> dict[str, str | None]:
    """Good stills mixed with files the line cannot use; each name with the NO_DECISION
    reason it must get (None: decided)."""
    folder.mkdir()
    rng = np.random.default_rng(17)
    expected: dict[str, str | None] = {}
    stills = [synthetic.render(rng, 2 * MODEL_SIZE, MODEL_CLASS, defective=bool(i % 2))[0] for i in range(4)]
    for i, image in enumerate(stills):
        cv2.imwrite(str(folder / f"{i}_good.png"), image)
        expected[f"{i}_good.png"] = None
    # The first still again as a 16-bit file: scaled to 8 bits, it is the same picture. (Not
    # right after it: the same picture twice in a row is a frozen camera, a NO_DECISION.)
    cv2.imwrite(str(folder / "4_sixteen_bit.png"), stills[0].astype(np.uint16) * 257)
    expected["4_sixteen_bit.png"] = None
    ok, png = cv2.imencode(".png", stills[-1])
    assert ok
    undecodable = "OpenCV could not decode it: corrupt, truncated or not an image"
    (folder / "a_empty.png").write_bytes(b"")
    (folder / "b_text.png").write_text("a text file named like an image")
    (folder / "c_truncated.png").write_bytes(png.tobytes()[: png.size // 2])
    cv2.imwrite(str(folder / "d_float.tif"), stills[-1].astype(np.float32) / 255)
    cv2.imwrite(str(folder / "e_tiny.png"), np.full((1, 1), 128, np.uint8))
    (folder / "f_folder.png").mkdir()
    expected |= {
        "a_empty.png": "unreadable image: a_empty.png (empty file (0 bytes))",
        "b_text.png": f"unreadable image: b_text.png ({undecodable})",
        "c_truncated.png": f"unreadable image: c_truncated.png ({undecodable})",
        "d_float.tif": (
            "unreadable image: d_float.tif (float32 pixels have no defined 8-bit scale; save it as 8-bit)"
        ),
        "e_tiny.png": (
            f"image 1x1 is below the minimum 32x32 for a {MODEL_SIZE}x{MODEL_SIZE} model "
            "(fit: resize, 1/4 of each side); use larger images or a larger roi"
        ),
        "f_folder.png": "unreadable image: f_folder.png (a folder, not a file)",
    }
    return expected


def test_a_folder_of_mixed_good_and_unusable_files_ends_with_one_decision_per_file(
    line_package: Path, tmp_path: Path
) -> None:
    """N entries in a lossless folder: N decisions, published and logged, in file-name order.
    Each file the line cannot use (empty, not an image, truncated, float pixels, a folder)
    or should not judge (1x1) is a NO_DECISION naming it and why; the others are decided.
    A NO_DECISION is a decision, not a loss: the books are whole and the exit code is 0.
    (Before: the unreadable files were skipped with a log line and the 1x1 one was a PASS.)"""
    folder = tmp_path / "mixed"
    expected = write_mixed_folder(folder)
    names = sorted(expected)  # the folder's replay order: seq i is names[i]
    camera = {
        "id": "mixed",
        "source": "folder",
        "fps": 0,
        "policy": "lossless",
        "options": {"path": str(folder)},
    }
    cfg = line_config(tmp_path, line_package, [camera])
    daemon, sub = start_line(tmp_path, cfg)
    code = finish(daemon, sub, timeout=90)
    out = daemon.output()
    assert code == 0, out
    assert "Traceback" not in out, out

    published = {r["seq"]: r for r in sub.results}
    assert sorted(published) == list(range(len(names))), sorted(published)
    for seq, name in enumerate(names):
        result = published[seq]
        if expected[name] is None:
            assert result["decision"] in ("PASS", "FAIL"), (name, result)
        else:
            assert (result["decision"], result["reason"]) == ("NO_DECISION", expected[name]), name
    # The 16-bit copy of the first still is judged like the 8-bit original.
    sixteen, original = published[names.index("4_sixteen_bit.png")], published[names.index("0_good.png")]
    assert sixteen["decision"] == original["decision"]
    assert sixteen["defect_area"] == original["defect_area"]

    with sqlite3.connect(cfg["sinks"]["decision_log"]) as db:
        rows = db.execute("SELECT seq, decision, reason FROM decisions WHERE camera_id = 'mixed'").fetchall()
    assert sorted(rows) == sorted((r["seq"], r["decision"], r["reason"]) for r in sub.results)

    summary = daemon.summary()
    check_ledger(summary)
    ledger = summary["cameras"]["mixed"]
    assert ledger["captured"] == ledger["decided"] == len(names), ledger
    assert ledger["dropped"] == 0 and summary["lost"] == {}, summary
