"""Wire messages between cameras, router, workers and collector.

Every message is multipart: a small JSON header first, then zero or more raw
buffers (pixels, masks). The header says what the buffers are (``shape``,
``dtype``), so a receiver can rebuild arrays without copying. See
docs/protocol.md for the subscriber-facing part.

Message kinds (header ``"t"``), by socket:

- frames (camera DEALER -> router ROUTER): ``hello`` (a camera announces itself and asks
  for credits), ``frame`` [header, pixels]; router -> camera: ``credit`` (``n`` more frames
  may come). A camera sends only what it has credit for, so a backlogged camera waits in
  its own buffer and never blocks another camera's frames (per-camera back-pressure).
- work (worker DEALER -> router ROUTER): ``ready`` (credits asked, ``done`` frames acked),
  ``heartbeat`` (from the worker's heartbeat thread, also during inference: the frames it
  holds and the credits it has open), ``bye``; router -> worker: ``welcome``, ``frame``.
- results (everyone PUSH -> collector PULL): ``result`` [header, mask] (+ [image] when the
  decision keeps it) and ``drop`` from workers; ``drop`` and ``router_stats`` from the
  router; ``stats`` straight from each camera (a path that back-pressure cannot block);
  ``supervisor`` from the supervisor.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import zmq

from converter.errors import LinesideError

PROTOCOL_VERSION = 1

#: frames the router keeps queued per camera (credits it hands out): enough to keep the
#: workers fed between two credit round trips, small enough that a backlog stays at the camera
CAMERA_WINDOW = {"latest": 2, "lossless": 8}

#: Below this size a copying send is cheaper than zero-copy bookkeeping
#: (pyzmq docs; measured with `lineside bench --transport`).
ZERO_COPY_MIN_BYTES = 64 * 1024

ALLOWED_DTYPES = ("uint8", "float32")
#: Largest frame a worker accepts: guards against a malformed header asking for GBs.
MAX_FRAME_PIXELS = 64 * 1024 * 1024


class ProtocolError(LinesideError):
    """A message that does not follow the protocol; it is counted and dropped, never fatal."""


class Rejections:
    """Counts rejected (malformed) messages on one socket; logs the first ten, then every
    thousandth, so a flood of garbage is visible without flooding the log."""

    def __init__(self, where: str, logger: logging.Logger) -> None:
        self.where = where
        self.logger = logger
        self.count = 0

    def __call__(self, why: str) -> None:
        self.count += 1
        if self.count <= 10 or self.count % 1000 == 0:
            self.logger.warning("malformed message on the %s socket (#%d): %s", self.where, self.count, why)


def encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()


def decode_header(raw: bytes | memoryview) -> dict[str, Any]:
    """Parse a JSON header; raise ProtocolError (never anything else) when it is malformed."""
    try:
        header = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"malformed header: not JSON ({exc.__class__.__name__})"
        raise ProtocolError(msg) from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        msg = "malformed header: expected a JSON object with a 't' kind"
        raise ProtocolError(msg)
    return header


def frame_header(
    camera_id: str,
    seq: int,
    capture_ts: float,
    image: np.ndarray,
    *,
    sent_ts: float,
    truth: dict[str, Any] | None = None,
    max_age_ms: float = 0.0,
    decide: bool = True,
    policy: str = "latest",
    epoch: int = 0,
) -> dict[str, Any]:
    """The header of a ``frame`` message.

    ``decide=False`` marks a camera-fault placeholder: the worker answers it with
    NO_DECISION instead of inferring, so a fault is reported rather than hidden.
    """
    return {
        "t": "frame",
        "v": PROTOCOL_VERSION,
        "cam": camera_id,
        "epoch": epoch,
        "seq": seq,
        "ts": capture_ts,
        "sent": sent_ts,
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "truth": truth,
        "max_age_ms": max_age_ms,
        "decide": decide,
        "policy": policy,
    }


def image_from_frame(header: dict[str, Any], buffer: Any) -> np.ndarray:
    """Rebuild the pixel array of a frame message, validating the header first."""
    try:
        camera_id, seq = header["cam"], header["seq"]
        shape = tuple(int(s) for s in header["shape"])
        dtype = header["dtype"]
    except (KeyError, TypeError, ValueError):
        msg = "malformed frame header: needs cam, seq, shape and dtype"
        raise ProtocolError(msg) from None
    if not isinstance(camera_id, str) or not isinstance(seq, int):
        msg = "malformed frame header: cam must be a string and seq an integer"
        raise ProtocolError(msg)
    if dtype not in ALLOWED_DTYPES:
        msg = f"frame from {camera_id}: dtype {dtype!r} not allowed; allowed: {', '.join(ALLOWED_DTYPES)}"
        raise ProtocolError(msg)
    if len(shape) not in (2, 3) or any(s <= 0 for s in shape) or int(np.prod(shape)) > MAX_FRAME_PIXELS:
        msg = f"frame from {camera_id}: bad shape {list(shape)}"
        raise ProtocolError(msg)
    buf = memoryview(buffer)
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if buf.nbytes != expected:
        msg = f"frame {camera_id}#{seq}: buffer has {buf.nbytes} bytes, header says {expected}"
        raise ProtocolError(msg)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def send_multipart(socket: Any, header: dict[str, Any], *buffers: Any, flags: int = 0) -> None:
    """Send a header and buffers; large buffers go zero-copy, small ones are copied."""
    socket.send(encode_header(header), flags | zmq.SNDMORE if buffers else flags)
    for i, buf in enumerate(buffers):
        last = i == len(buffers) - 1
        nbytes = buf.nbytes if hasattr(buf, "nbytes") else len(buf)
        socket.send(
            buf,
            (flags if last else flags | zmq.SNDMORE),
            copy=nbytes < ZERO_COPY_MIN_BYTES,
        )
