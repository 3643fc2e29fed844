"""A real RTSP server for the tests: GStreamer's gst-rtsp-server, run by the system Python.

    /usr/bin/python3 tests/edge/peers/rtsp_server.py PORT [FPS] [SIZE]

Serves ``rtsp://127.0.0.1:PORT/test``: H.264 over RTP, SIZE x SIZE at FPS, live (frames are
made on the server's clock whether anyone reads them or not). The top band of each frame
carries the wall-clock time it was made, as 32 black/white blocks (10 ms units, see
``stamp_of`` in tests/edge/test_rtsp.py), so a reader can tell how old a frame is. Prints
"ready" once it listens. Needs Debian's python3-gi, gir1.2-gst-rtsp-server-1.0 and the
GStreamer base/good/ugly plugins (``.ci/run`` installs them).
"""

from __future__ import annotations

import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

BITS, COLS, BAND = 32, 8, 128


def frame(size: int, count: int) -> bytes:
    """One GRAY8 frame: the time stamp band on top, a moving texture below."""
    stamp = int(time.time() * 100) & 0xFFFFFFFF
    rows = []
    block_w, block_h = size // COLS, BAND // (BITS // COLS)
    for r in range(BITS // COLS):
        row = bytearray()
        for c in range(COLS):
            bit = (stamp >> (r * COLS + c)) & 1
            row += bytes([235 if bit else 20]) * block_w
        rows.append(bytes(row) * block_h)
    texture = bytes((x * 3 + y + count * 7) % 200 + 30 for y in range(size - BAND) for x in range(size))
    return b"".join(rows) + texture


def main(port: str, fps: int = 10, size: int = 512) -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( appsrc name=src is-live=true format=time do-timestamp=true "
        f"caps=video/x-raw,format=GRAY8,width={size},height={size},framerate={fps}/1 "
        f"! videoconvert ! video/x-raw,format=I420 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    sources: list = []

    def on_configure(_factory, media) -> None:
        sources.append(media.get_element().get_by_name("src"))

    factory.connect("media-configure", on_configure)
    counter = [0]

    def push() -> bool:
        counter[0] += 1
        for src in sources:
            src.emit("push-buffer", Gst.Buffer.new_wrapped(frame(size, counter[0])))
        return True

    GLib.timeout_add(int(1000 / fps), push)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
