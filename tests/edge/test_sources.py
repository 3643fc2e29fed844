"""Frame sources and backoff: real files and real OpenCV; a fake capture stands in only
for a camera device that blocks."""

from __future__ import annotations

import random
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from converter.errors import LinesideError
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
    assert {"opencv", "folder"} <= set(available_sources())
    src = make_source("folder", path=tmp_path, fps=0)
    assert isinstance(src, FolderSource)
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


def test_folder_skips_and_counts_corrupt_images(image_folder, caplog):
    (image_folder / "img_01.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (image_folder / "img_02b.png").write_bytes(b"")
    src = FolderSource(image_folder, pattern="*.png")
    src.open()
    values = []
    while (frame := src.read()) is not None:
        values.append(int(frame.image[0, 0]))
    assert values == [10, 30, 40]
    assert src.corrupt == 2
    assert "img_01.png" in caplog.text


def test_folder_loops(image_folder):
    src = FolderSource(image_folder, loop=True, pattern="img_0[0-1].png")
    src.open()
    assert [int(src.read().image[0, 0]) for _ in range(5)] == [10, 20, 10, 20, 10]


def test_folder_looping_over_only_corrupt_files_raises_instead_of_spinning(tmp_path):
    (tmp_path / "a.png").write_bytes(b"nope")
    src = FolderSource(tmp_path, loop=True)
    src.open()
    with pytest.raises(CameraError, match="none of the 1 images"):
        src.read()
    assert src.corrupt == 1


def test_folder_throttles_to_fps(image_folder):
    src = FolderSource(image_folder, fps=50, loop=True)
    src.open()
    start = time.monotonic()
    for _ in range(6):
        src.read()
    assert time.monotonic() - start >= 5 / 50 - 0.005  # 6 frames = 5 periods


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
    with OpenCvSource(str(video_file), fps=50) as src:
        start = time.monotonic()
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
