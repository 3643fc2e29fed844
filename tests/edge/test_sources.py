"""Frame sources and backoff: real files and real OpenCV; a fake capture stands in only
for a camera device that blocks."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from converter.errors import LinesideError
from edge.camera import CameraLoop
from edge.config import CameraConfig, LineConfig
from edge.sources import (
    Backoff,
    CameraConfigError,
    CameraError,
    Captured,
    FrameSource,
    SourceConfigError,
    available_sources,
    make_source,
    register_source,
)
from edge.sources.folder_source import FolderSource
from edge.sources.opencv_source import OpenCvSource, gstreamer_available, is_gstreamer_pipeline, redact_uri

# ---------------------------------------------------------------- backoff


def test_backoff_grows_exponentially_to_the_cap():
    b = Backoff(initial_s=0.5, cap_s=5.0, factor=2.0, jitter=0.0)
    assert [b.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert b.attempts == 7
    b.reset()
    assert b.attempts == 0 and b.next_delay() == 0.5


def test_backoff_jitter_stays_in_bounds_and_is_seeded():
    b = Backoff(initial_s=1.0, cap_s=8.0, factor=2.0, jitter=0.2, rng=random.Random(3))
    delays = []
    for _ in range(200):
        b.reset()
        delays.append([b.next_delay() for _ in range(5)])
    for i, base in enumerate([1.0, 2.0, 4.0, 8.0, 8.0]):
        column = [row[i] for row in delays]
        assert min(column) >= base * 0.8 - 1e-9
        assert max(column) <= min(base * 1.2, 8.0) + 1e-9
        assert len(set(column)) > 100  # it really jitters
    again = Backoff(initial_s=1.0, cap_s=8.0, factor=2.0, jitter=0.2, rng=random.Random(3))
    assert [again.next_delay() for _ in range(5)] == delays[0]


def test_backoff_survives_many_attempts_and_refuses_bad_settings():
    b = Backoff(initial_s=0.1, cap_s=30.0, jitter=0.0)
    for _ in range(5000):
        delay = b.next_delay()
    assert delay == 30.0
    for kwargs in [{"initial_s": 0}, {"initial_s": 5, "cap_s": 1}, {"factor": 0.5}, {"jitter": 1.0}]:
        with pytest.raises(ValueError):
            Backoff(**kwargs)


def test_backoff_wait_wakes_on_stop():
    stop = threading.Event()
    stop.set()
    start = time.monotonic()
    assert Backoff(initial_s=10.0, cap_s=10.0).wait(stop) is True
    assert time.monotonic() - start < 1.0


# ---------------------------------------------------------------- registry


def test_make_source_registry(tmp_path):
    assert {"opencv", "folder", "synthetic"} <= set(available_sources())
    src = make_source("folder", path=tmp_path, fps=0)
    assert isinstance(src, FolderSource)
    # synthetic is in the table like the others, not registered by whoever uses it first
    assert type(make_source("synthetic", size=32, bank=1)).__name__ == "SyntheticSource"
    with pytest.raises(SourceConfigError, match=r"unknown camera source kind 'usb'.*folder") as info:
        make_source("usb")
    assert isinstance(info.value, LinesideError)
    with pytest.raises(SourceConfigError, match="fpz"):
        make_source("folder", path=tmp_path, fpz=3)

    class Static(FrameSource):
        name = "static"

        def __init__(self, value: int = 0) -> None:
            self.value = value

        def open(self) -> None: ...

        def read(self) -> Captured | None:
            return Captured(np.full((2, 2), self.value, np.uint8), time.time(), truth={"defect": False})

        def close(self) -> None: ...

    register_source("static-test", Static)
    with make_source("static-test", value=7) as s:
        assert s.read().image[0, 0] == 7


# ---------------------------------------------------------------- folder


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"img_{i:02d}.png"), np.full((16, 24), 10 * (i + 1), np.uint8))
    cv2.imwrite(str(folder / "img_04.jpg"), np.full((16, 24, 3), 200, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_replays_in_sorted_order_then_ends(image_folder):
    src = FolderSource(image_folder)
    src.open()
    frames = [src.read() for _ in range(5)]
    assert src.read() is None
    assert [int(f.image[0, 0]) for f in frames[:4]] == [10, 20, 30, 40]
    assert frames[0].image.shape == (16, 24) and frames[0].image.dtype == np.uint8  # gray stays gray
    assert frames[4].image.shape == (16, 24, 3)
    assert all(f.truth is None for f in frames)
    assert frames[0].capture_ts <= frames[4].capture_ts <= time.time()
    assert src.last_path.name == "img_04.jpg"
    src.close()


def write_unusable_files(folder: Path) -> dict[str, str]:
    """Real files a folder camera can meet that give no usable 8-bit frame, each with the
    words its NO_DECISION reason must contain."""
    ok, png = cv2.imencode(".png", np.full((40, 40), 90, np.uint8))
    ok2, jpg = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (64, 64), np.uint8))
    assert ok and ok2
    (folder / "b_empty.png").write_bytes(b"")
    (folder / "c_text.png").write_text("not an image, only named like one")
    (folder / "d_truncated.png").write_bytes(png.tobytes()[: png.size // 2])
    (folder / "e_truncated.jpg").write_bytes(jpg.tobytes()[: jpg.size // 2])
    cv2.imwrite(str(folder / "f_float.tif"), np.full((40, 40), 0.5, np.float32))
    (folder / "g_folder.png").mkdir()
    return {
        "b_empty.png": "(empty file (0 bytes))",
        "c_text.png": "(OpenCV could not decode it: corrupt, truncated or not an image)",
        "d_truncated.png": "(OpenCV could not decode it: corrupt, truncated or not an image)",
        "e_truncated.jpg": "(OpenCV could not decode it: corrupt, truncated or not an image)",
        "f_float.tif": "(float32 pixels have no defined 8-bit scale; save it as 8-bit)",
        "g_folder.png": "(a folder, not a file)",
    }


def test_folder_reports_each_unusable_file_as_an_item_naming_the_file_and_why(image_folder, caplog):
    """An unusable file is an item of its own (the camera makes it a NO_DECISION), never a
    silent gap: each read gives one item, in file-name order, and only the end gives None."""
    bad = write_unusable_files(image_folder)
    src = FolderSource(image_folder)
    src.open()
    items = []
    while (item := src.read()) is not None:
        items.append(item)
        if item.fault is None:
            assert item.image.dtype == np.uint8 and item.image.size
    faults = [item.fault for item in items if item.fault is not None]
    assert faults == [f"unreadable image: {name} {why}" for name, why in sorted(bad.items())]
    assert [int(i.image.flat[0]) for i in items if i.fault is None] == [10, 20, 30, 40, 200]
    assert len(items) == 5 + len(bad) and src.corrupt == len(bad) and src.frames == 5
    assert all(i.image.size == 0 and i.truth is None for i in items if i.fault is not None)
    assert "g_folder.png" in caplog.text  # logged as well


def test_folder_scales_16_bit_full_scale_to_8_bit(tmp_path):
    # 500 / 257 = 1.95: rounded to 2 (OpenCV's own 8-bit load of a PNG truncates it to 1)
    values = np.array([[0, 500, 257 * 100, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "gray16.png"), np.repeat(values, 4, axis=0))
    cv2.imwrite(str(tmp_path / "rgb16.tif"), np.dstack([np.repeat(values, 4, axis=0)] * 3))
    src = FolderSource(tmp_path)
    src.open()
    gray, rgb = src.read(), src.read()
    assert gray.fault is None and gray.image.dtype == np.uint8 and gray.image.shape == (4, 4)
    assert gray.image[0].tolist() == [0, 2, 100, 255]
    assert rgb.image.shape == (4, 4, 3) and rgb.image[0, :, 0].tolist() == [0, 2, 100, 255]


def test_folder_file_gone_between_listing_and_reading_is_an_item_not_a_crash(image_folder):
    src = FolderSource(image_folder, pattern="*.png")
    src.open()
    (image_folder / "img_01.png").unlink()
    (image_folder / "img_02.png").unlink()
    (image_folder / "img_02.png").symlink_to(image_folder / "nowhere.png")
    items = [src.read() for _ in range(4)]
    assert src.read() is None
    assert items[1].fault == "unreadable image: img_01.png (gone: removed after the folder was listed)"
    assert items[2].fault == "unreadable image: img_02.png (a broken link)"
    assert [items[0].fault, items[3].fault] == [None, None]


def test_folder_loops(image_folder):
    src = FolderSource(image_folder, loop=True, pattern="img_0[0-1].png")
    src.open()
    assert [int(src.read().image[0, 0]) for _ in range(5)] == [10, 20, 10, 20, 10]


def test_a_looping_folder_decodes_each_file_once_until_it_changes(image_folder, monkeypatch):
    src = FolderSource(image_folder, loop=True, pattern="img_0[0-1].png")
    decoded = []
    load = FolderSource._load
    monkeypatch.setattr(FolderSource, "_load", staticmethod(lambda p: decoded.append(p.name) or load(p)))
    src.open()
    first = [src.read().image for _ in range(4)]
    assert decoded == ["img_00.png", "img_01.png"]  # the second pass came from the cache
    assert first[2] is first[0] and not first[0].flags.writeable  # shared, so read-only
    assert src.cached_bytes == 2 * 16 * 24
    cv2.imwrite(str(image_folder / "img_00.png"), np.full((16, 24), 99, np.uint8))
    os.utime(image_folder / "img_00.png", ns=(1, 1))  # a new mtime even on a coarse clock
    assert int(src.read().image[0, 0]) == 99  # a changed file is decoded again
    assert decoded[-1] == "img_00.png"


def test_the_folder_cache_keeps_to_its_cap_and_only_loops_use_it(image_folder, monkeypatch):
    decoded = []
    load = FolderSource._load
    monkeypatch.setattr(FolderSource, "_load", staticmethod(lambda p: decoded.append(p.name) or load(p)))
    capped = FolderSource(image_folder, loop=True, pattern="img_0[0-1].png", cache_mb=384 / 2**20)
    capped.open()
    assert [int(capped.read().image[0, 0]) for _ in range(6)] == [10, 20] * 3
    assert decoded == ["img_00.png", "img_01.png", "img_01.png", "img_01.png"]  # one frame fits
    assert capped.cached_bytes == 384
    once = FolderSource(image_folder, pattern="img_0[0-1].png")  # no loop: nothing to keep
    once.open()
    assert once.read().image.flags.writeable and once.cached_bytes == 0


def test_folder_looping_over_only_unusable_files_raises_instead_of_spinning(tmp_path):
    (tmp_path / "a.png").write_bytes(b"nope")
    src = FolderSource(tmp_path, loop=True)
    src.open()
    assert (
        src.read().fault
        == "unreadable image: a.png (OpenCV could not decode it: corrupt, truncated or not an image)"
    )
    with pytest.raises(CameraError, match="none of the 1 images"):
        src.read()
    assert src.corrupt == 1


def read_for(src: FolderSource, frames: int) -> float:
    """Seconds ``src`` takes to give ``frames`` frames."""
    src.open()
    start = time.monotonic()
    for _ in range(frames):
        src.read()
    return time.monotonic() - start


def test_folder_throttles_to_fps(image_folder):
    """11 frames at 25 fps take 10 periods (0.4 s): no less, and not much more."""
    fps, frames = 25, 11
    periods = (frames - 1) / fps
    reading = read_for(FolderSource(image_folder, loop=True), frames)  # the same reads, unthrottled
    took = read_for(FolderSource(image_folder, fps=fps, loop=True), frames)
    assert took >= periods - 0.005
    # The pacer keeps a steady cadence, so a late wake-up is not carried into the next frame:
    # beyond the reads themselves only the last wake-up is late. Half the run's time is left
    # for that on a loaded machine; a pacer off by a period per frame or a factor of two
    # (0.8 s) fails here.
    assert took < periods * 1.5 + reading, f"{frames} frames at {fps} fps took {took:.3f} s"


def test_folder_missing_or_empty_raises_camera_error(tmp_path):
    with pytest.raises(CameraError, match="does not exist") as info:
        FolderSource(tmp_path / "nope").open()
    assert str(tmp_path / "nope") in str(info.value)
    with pytest.raises(CameraError, match="no images"):
        FolderSource(tmp_path).open()
    with pytest.raises(SourceConfigError):
        FolderSource(tmp_path, fps=-1)


# ---------------------------------------------------------------- opencv: real video files


@pytest.fixture
def video_file(tmp_path):
    path = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    for i in range(6):
        writer.write(np.full((48, 64, 3), 30 * i + 20, np.uint8))
    writer.release()
    return path


def test_opencv_reads_a_real_video_file_then_ends(video_file):
    src = OpenCvSource(str(video_file))
    src.open()
    means = []
    while (frame := src.read()) is not None:
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        means.append(frame.image.mean())
    assert len(means) == 6
    assert np.allclose(means, [30 * i + 20 for i in range(6)], atol=3)  # MJPG is lossy
    assert src.read() is None
    src.close()
    src.open()  # re-openable: starts again
    assert src.read() is not None
    src.close()
    src.close()


def test_opencv_loops_a_video_file(video_file):
    with OpenCvSource(str(video_file), loop=True) as src:
        frames = [src.read() for _ in range(14)]
    assert all(f is not None for f in frames)
    assert abs(frames[6].image.mean() - frames[0].image.mean()) < 3
    assert abs(frames[12].image.mean() - frames[0].image.mean()) < 3


def test_opencv_replays_a_video_file_at_fps(video_file):
    # timed from before open: the pacer's cadence starts there, so a slow open (a loaded box)
    # lets the first reads catch up and a clock started after open would see them early
    start = time.monotonic()
    with OpenCvSource(str(video_file), fps=50) as src:
        assert all(src.read() is not None for _ in range(6))
        assert time.monotonic() - start >= 5 / 50 - 0.005


def test_opencv_missing_file_and_refused_stream_fail_within_the_deadline(tmp_path):
    with pytest.raises(CameraError, match="not found"):
        OpenCvSource(str(tmp_path / "missing.avi")).open()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = OpenCvSource(f"rtsp://user:secret@127.0.0.1:{port}/stream", open_timeout_s=2.0)
    start = time.monotonic()
    with pytest.raises(CameraError) as info:
        src.open()
    assert time.monotonic() - start < 2.5
    assert "secret" not in str(info.value)


def test_opencv_open_deadline_with_a_silent_real_peer():
    # A TCP peer that accepts and never answers: FFmpeg would wait on it.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    src = OpenCvSource(f"http://127.0.0.1:{port}/video.mjpg", open_timeout_s=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(CameraError):
            src.open()
        assert time.monotonic() - start < 1.0
    finally:
        src.close()
        server.close()
        for conn, _ in accepted:
            conn.close()


# ---------------------------------------------------------------- opencv: a device that blocks


class FakeCapture:
    """Stands in for a camera device: reads frames until told to block."""

    def __init__(self, block: threading.Event | None = None, open_delay_s: float = 0.0, frame=None):
        time.sleep(open_delay_s)
        self.block = block
        self.frame = np.zeros((4, 6, 3), np.uint8) if frame is None else frame
        self.released = False

    def isOpened(self) -> bool:  # OpenCV's spelling
        return True

    def grab(self) -> bool:
        if self.block is not None:
            self.block.wait(30)  # a driver stuck inside grab()
        time.sleep(0.005)  # a 200 fps camera: the grab loop waits for each frame
        return True

    def retrieve(self):
        return True, self.frame.copy()

    def read(self):
        return self.grab() and self.retrieve()

    def release(self) -> None:
        self.released = True


def test_blocked_read_becomes_camera_error_within_deadline_and_reopens():
    stuck = threading.Event()
    captures: list[FakeCapture] = []

    def factory(target, api, params):
        # The first capture blocks in read(); the one after a reopen works.
        captures.append(FakeCapture(block=stuck if not captures else None))
        return captures[-1]

    src = OpenCvSource("rtsp://camera/stream", read_timeout_s=0.3, capture_factory=factory)
    src.open()
    start = time.monotonic()
    with pytest.raises(CameraError, match=r"read timed out after 0\.3s"):
        src.read()
    assert 0.25 < time.monotonic() - start < 1.0
    assert src.timeouts == 1 and src.abandoned == 1
    with pytest.raises(CameraError, match="before open"):
        src.read()
    src.open()
    frame = src.read()
    assert isinstance(frame, Captured) and frame.image.shape == (4, 6, 3)
    src.close()
    assert captures[1].released
    stuck.set()  # let the abandoned thread finish: it releases its capture and exits
    for _ in range(100):
        if captures[0].released:
            break
        time.sleep(0.01)
    assert captures[0].released


def test_close_is_bounded_when_release_hangs():
    hang = threading.Event()

    class StuckRelease(FakeCapture):
        def release(self) -> None:
            hang.wait(30)  # a GStreamer pipeline that never reaches NULL state

    src = OpenCvSource("rtsp://cam/s", close_timeout_s=0.2, capture_factory=lambda *a: StuckRelease())
    src.open()
    assert src.read() is not None
    start = time.monotonic()
    src.close()
    assert time.monotonic() - start < 0.6
    assert src.abandoned == 1
    hang.set()


def test_blocked_open_becomes_camera_error_within_deadline():
    def factory(target, api, params):
        return FakeCapture(open_delay_s=2.0)

    src = OpenCvSource(0, open_timeout_s=0.3, capture_factory=factory)
    start = time.monotonic()
    with pytest.raises(CameraError, match=r"open timed out after 0\.3s"):
        src.open()
    assert time.monotonic() - start < 1.0
    assert src.abandoned == 1


def test_stream_options_and_frame_checks():
    seen = {}

    def factory(target, api, params):
        seen.update(target=target, api=api, params=params)
        return FakeCapture(frame=np.zeros((4, 6), np.uint16))

    src = OpenCvSource("rtsp://cam/s", open_timeout_s=1.5, read_timeout_s=0.5, capture_factory=factory)
    src.open()
    assert seen["params"] == [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 1500, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 500]
    with pytest.raises(CameraConfigError, match="uint16"):
        src.read()
    src.close()
    OpenCvSource("3", capture_factory=factory).open()
    assert seen["target"] == 3 and seen["params"] == []  # a device index, no stream options
    assert OpenCvSource("/dev/video0").kind == "device"

    class Dropped(FakeCapture):
        def grab(self):
            return False

    for uri in ("rtsp://camera/stream", "/dev/video0"):
        live = OpenCvSource(uri, capture_factory=lambda *a: Dropped())
        live.open()
        with pytest.raises(CameraError, match="disconnected"):
            live.read()  # a live stream never "ends": a failed read is a fault
    with pytest.raises(SourceConfigError, match="backend"):
        OpenCvSource(0, backend="directshow")


def test_gstreamer_pipeline_detection_and_refusal():
    assert is_gstreamer_pipeline("v4l2src device=/dev/video0 ! videoconvert ! appsink")
    assert is_gstreamer_pipeline("videotestsrc")
    assert not is_gstreamer_pipeline("rtsp://user:pa!ss@10.0.0.5/stream")
    assert not is_gstreamer_pipeline("/data/line.avi")
    assert not is_gstreamer_pipeline(0)
    assert redact_uri("rtsp://admin:pa!ss@10.0.0.5:554/s") == "rtsp://admin:***@10.0.0.5:554/s"
    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer; the refusal cannot be shown here")
    src = OpenCvSource("videotestsrc ! videoconvert ! appsink")
    with pytest.raises(CameraConfigError, match=r"no GStreamer.*python3-opencv") as info:
        src.open()
    assert "\n" not in str(info.value)
    assert info.value.retryable is False


# ---------------------------------------------------------------- camera: items to frames


def camera_loop(fit: str = "resize", roi: list[int] | None = None, side: int = 128) -> CameraLoop:
    """A camera loop for a ``side`` x ``side`` model, not connected: what ``emit`` queues is
    what it would send (sockets are not needed to see a frame's header)."""
    cam = CameraConfig(id="cam", policy="lossless", fit=fit, roi=roi or [])
    return CameraLoop(LineConfig(line_key="00" * 32), cam, (side, side))


def queued(loop: CameraLoop) -> list[tuple[int, bool, str | None, tuple[int, ...]]]:
    return [(h["seq"], h["decide"], h.get("fault"), img.shape) for h, img in loop.pending]


def test_camera_turns_an_unusable_item_into_a_no_decision_with_a_seq_of_its_own():
    loop = camera_loop()
    good = np.random.default_rng(2).integers(20, 200, (256, 256), np.uint8)
    loop.emit(Captured(good, time.time()))
    loop.emit(Captured.unusable("unreadable image: b.png (empty file (0 bytes))"))
    loop.emit(Captured(good[::-1].copy(), time.time()))
    assert queued(loop) == [
        (0, True, None, (128, 128)),
        (1, False, "unreadable image: b.png (empty file (0 bytes))", (1, 1)),
        (2, True, None, (128, 128)),
    ]
    assert loop.seq == 3


@pytest.mark.parametrize(
    ("fit", "hw", "refused"),
    [
        ("resize", (1, 1), "image 1x1 is below the minimum 32x32 for a 128x128 model"),
        ("resize", (31, 400), "image 400x31 is below the minimum 32x32"),
        ("resize", (32, 32), None),  # a quarter of each side is still decided
        ("resize", (1024, 40), None),
        ("tile", (127, 500), "image 500x127 is below the minimum 128x128 for a 128x128 model (fit: tile"),
        ("tile", (128, 300), None),
    ],
)
def test_camera_refuses_a_frame_far_below_the_model_input(fit, hw, refused):
    loop = camera_loop(fit)
    image = np.random.default_rng(3).integers(20, 200, hw, np.uint8)
    loop.emit(Captured(image, time.time()))
    [(seq, decide, fault, shape)] = queued(loop)
    assert seq == 0
    if refused:
        assert not decide and fault.startswith(refused), fault
        assert fault.endswith("use larger images or a larger roi")
    else:
        assert decide and fault is None
        assert shape == ((128, 128) if fit == "resize" else hw)


def test_camera_size_check_applies_after_the_roi_and_to_every_source_kind(tmp_path):
    from edge.sources.synthetic_source import SyntheticSource

    loop = camera_loop(roi=[0, 0, 20, 200])  # a 20 px wide cut of a 256 px frame
    loop.emit(Captured(np.full((256, 256), 90, np.uint8), time.time()))
    assert queued(loop)[0][2].startswith("image 20x200 is below the minimum 32x32")
    synthetic = SyntheticSource(size=32, bank=1, defect_rate=0)  # it renders 32 px at least
    synthetic.open()
    loop = camera_loop(side=256)
    loop.emit(synthetic.read())
    assert queued(loop)[0][1] is False
    assert queued(loop)[0][2].startswith("image 32x32 is below the minimum 64x64 for a 256x256 model")
    video = tmp_path / "tiny.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (24, 24))
    writer.write(np.full((24, 24, 3), 120, np.uint8))
    writer.release()
    with OpenCvSource(str(video)) as src:
        loop = camera_loop()
        loop.emit(src.read())
    assert queued(loop)[0][2].startswith("image 24x24 is below the minimum 32x32")
