"""A real RTSP peer for the tests: GStreamer's gst-rtsp-server (tests/edge/peers/rtsp_server.py),
run by the system Python, where Debian's ``gi`` bindings live."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).resolve().parent / "peers" / "rtsp_server.py"
_CHECK = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
    "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
    "needed = ('appsrc', 'videoconvert', 'x264enc', 'rtph264pay');"
    "missing = [e for e in needed if not Gst.ElementFactory.find(e)];"
    "print(' '.join(missing))"
)
#: the stamp band of rtsp_server.py: 32 bits in 4 rows of 8 blocks over the top 128 rows
BITS, COLS, BAND = 32, 8, 128


def missing_reason() -> str | None:
    """Why the real RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (the RTSP server needs Debian's python3-gi)"
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", _CHECK], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "checking GStreamer timed out"
    if out.returncode != 0:
        return (
            "GStreamer's RTSP server is not installed (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
            "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly; .ci/run does)"
        )
    if out.stdout.strip():
        return f"GStreamer elements missing: {out.stdout.strip()} (install gstreamer1.0-plugins-ugly/-good)"
    return None


@dataclass
class RtspServer:
    """``rtsp://127.0.0.1:PORT/test``, live at ``fps``; ``kill()`` and ``start()`` again for an outage."""

    port: int
    fps: int = 10
    size: int = 256
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/test"

    def start(self, timeout_s: float = 20.0) -> RtspServer:
        argv = [SYSTEM_PYTHON, str(SERVER), str(self.port), str(self.fps), str(self.size)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if line.strip() == "ready":
                return self
            if not line and self.proc.poll() is not None:
                break
        self.kill()
        msg = f"the RTSP server did not start on port {self.port}"
        raise RuntimeError(msg)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a goodbye, as a camera that loses power."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def stamp_of(image: np.ndarray, now: float) -> float:
    """When the server made this frame (Unix seconds), read from its stamp band."""
    gray = image[..., 0] if image.ndim == 3 else image
    width = gray.shape[1]
    block_w, block_h = width // COLS, BAND // (BITS // COLS)
    value = 0
    for r in range(BITS // COLS):
        for c in range(COLS):
            y0, x0 = r * block_h, c * block_w
            centre = gray[
                y0 + block_h // 4 : y0 + 3 * block_h // 4, x0 + block_w // 4 : x0 + 3 * block_w // 4
            ]
            if centre.mean() > 128:
                value |= 1 << (r * COLS + c)
    # The stamp is the time in 10 ms units modulo 2**32: put back the high bits of "now".
    now_units = int(now * 100)
    units = (now_units & ~0xFFFFFFFF) | value
    if units > now_units + 2**31:
        units -= 2**32
    return units / 100
