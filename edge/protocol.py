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
  holds, the credits it has open, and why it runs another backend than configured),
  ``bye``; router -> worker: ``welcome``, ``frame``.
- results (everyone PUSH -> collector PULL): ``result`` [header, mask] (+ [image] when the
  decision keeps it) (+ [preview] when the header says ``preview``: a small JPEG of the frame)
  and ``drop`` from workers; ``drop`` and ``router_stats`` from the
  router; ``stats`` straight from each camera (a path that back-pressure cannot block);
  ``supervisor`` from the supervisor; ``sink_stats`` from the MQTT and OPC UA sinks.

Every header is checked against its kind's schema on receipt (``decode``), and what only
the line's own processes may say is proven: frames carry a tag, and the line's own
reports a seal, both made with a key that the supervisor makes per run (``frame_tag``,
``seal``). ``hello``, ``credit``, ``stats``, ``router_stats``, ``supervisor`` and ``sink_stats`` go as
[header, seal]. docs/security.md says what this protects against.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Container
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import zmq

from converter.errors import LinesideError
from edge.config import CAMERA_ID_PATTERN, MAX_NAME_LEN

#: the major version of the wire protocol, sent as ``v`` in every frame header. Within a major,
#: fields are only added (a receiver ignores fields it does not know); a change that an older
#: receiver would misread raises it, and a receiver refuses a message of a newer major
#: (``decode``) instead of guessing at it.
PROTOCOL_VERSION = 1

#: frames the router keeps queued per camera (credits it hands out): enough to keep the
#: workers fed between two credit round trips, small enough that a backlog stays at the camera
CAMERA_WINDOW = {"latest": 2, "lossless": 8}

ALLOWED_DTYPES = ("uint8", "float32")
#: Largest frame a worker accepts: guards against a malformed header asking for GBs.
MAX_FRAME_PIXELS = 64 * 1024 * 1024
#: Largest preview JPEG the collector accepts and publishes: a 2048 px preview (publish.preview_px's
#: maximum) of a busy colour frame at quality 80 stays well under it; a bigger one is no preview.
MAX_PREVIEW_BYTES = 4 * 1024 * 1024
#: every JPEG starts with this (SOI marker): a cheap check that a preview is one, without decoding it
JPEG_MAGIC = b"\xff\xd8"


class ProtocolError(LinesideError):
    """A message that does not follow the protocol; it is counted (under ``why``) and dropped,
    never fatal."""

    why = "malformed"


class NewerProtocolError(ProtocolError):
    """A message of a newer major protocol version than this lineside speaks."""

    why = "version"


#: why a message was rejected (the ``why`` label of lineside_rejected_messages_total):
#: ``malformed`` (not the protocol: bad JSON, types, sizes, parts), ``unauthenticated`` (a
#: frame tag or seal that this line did not make), ``unknown`` (a camera the config does not
#: have), ``version`` (a newer major protocol version than this lineside's: upgrade it),
#: ``internal`` (a handler raised: a bug, since the schema should have refused the message)
REJECT_REASONS = ("malformed", "unauthenticated", "unknown", "version", "internal")
#: a rejection log line at most this often per socket, after the first few
REJECT_LOG_EVERY_S = 10.0


class Rejections:
    """Counts rejected messages on one socket, by why; logs the first five, then at most one
    line per ``REJECT_LOG_EVERY_S`` with the count since, so a flood of garbage is visible
    without flooding the log."""

    def __init__(self, where: str, logger: logging.Logger) -> None:
        self.where = where
        self.logger = logger
        self.counts: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self._logged_at = 0.0
        self._unlogged = 0

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def __call__(self, why: str, kind: str = "malformed") -> None:
        self.counts[kind] += 1
        now = time.monotonic()
        if self.count <= 5 or now - self._logged_at >= REJECT_LOG_EVERY_S:
            more = f" (and {self._unlogged} more since the last such line)" if self._unlogged else ""
            self.logger.warning(
                "%s message on the %s socket rejected (#%d): %s%s", kind, self.where, self.count, why, more
            )
            self._logged_at, self._unlogged = now, 0
        else:
            self._unlogged += 1

    def guard(self, handler: Any, *args: Any) -> None:
        """Run one message's handler; one that raises is counted as ``internal`` (with its
        traceback in the log) and the socket loop goes on: no message may stop a process."""
        try:
            handler(*args)
        except Exception as exc:
            if self.counts["internal"] < 5:
                self.logger.error("%s: handler %s failed", self.where, handler.__name__, exc_info=True)
            self(f"{handler.__name__} raised {exc!r}", "internal")


def encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()


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
    key: bytes | None = None,
) -> dict[str, Any]:
    """The header of a ``frame`` message, tagged with the line ``key`` (see ``frame_tag``).

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
        "tag": frame_tag(key, camera_id, epoch, seq) if key else "",
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
    """Send a header and buffers; large buffers go zero-copy, small ones are copied.

    ``copy=False`` is all it takes: pyzmq copies a buffer below the socket's ``copy_threshold``
    anyway (zmq.COPY_THRESHOLD, 64 KiB), where a copy is cheaper than zero-copy bookkeeping."""
    socket.send(encode_header(header), flags | zmq.SNDMORE if buffers else flags)
    for i, buf in enumerate(buffers):
        last = i == len(buffers) - 1
        socket.send(buf, flags if last else flags | zmq.SNDMORE, copy=False)


# -- the schema of every message --------------------------------------------------------
# One msgspec Struct per message kind, tagged by the header's "t". A header is decoded
# straight into its kind's Struct, which checks types (a bool is not a number, a float is
# not an int), ranges and sizes, and refuses NaN and Infinity (not JSON) and numbers out of
# range; fields a Struct does not name are ignored (a newer sender may add some). Every
# receiver then works on a plain dict of checked values (``decode``).

#: largest JSON header accepted on any socket (a router's report of what it holds is the
#: largest message: a few thousand frames' names)
MAX_HEADER_BYTES = 1 << 20
#: longest list in a header (seqs of one drop report, frames a worker holds, ...)
MAX_ITEMS = 100_000

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
#: what a camera id may be (edge/config.py refuses others at start)
CameraId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LEN, pattern=f"^{CAMERA_ID_PATTERN}$")
]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=1e11)]
Millis = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Tag = Annotated[str, msgspec.Meta(max_length=64)]
Side = Annotated[int, msgspec.Meta(ge=1, le=65536)]
Shape = Annotated[list[Side], msgspec.Meta(min_length=2, max_length=3)]
Policy = Literal["latest", "lossless"]
#: a frame's name in lists: [camera, epoch, seq] (and its tag where the receiver checks it)
FrameRef = tuple[CameraId, Count, Count]
TaggedRef = tuple[CameraId, Count, Count, Tag]


def _items(tp: Any) -> Any:
    return Annotated[list[tp], msgspec.Meta(max_length=MAX_ITEMS)]


class _Message(msgspec.Struct, tag_field="t", forbid_unknown_fields=False):
    pass


class Hello(_Message, tag="hello"):
    cam: CameraId
    epoch: Count = 0
    policy: Policy = "latest"
    credits: Count = 0


class Credit(_Message, tag="credit"):
    cam: CameraId
    n: Annotated[int, msgspec.Meta(ge=0, le=MAX_ITEMS)]


class Frame(_Message, tag="frame"):
    cam: CameraId
    seq: Count
    ts: Seconds
    shape: Shape
    dtype: Literal["uint8", "float32"]
    epoch: Count = 0
    v: Annotated[int, msgspec.Meta(ge=0, le=1000)] = PROTOCOL_VERSION
    sent: Seconds = 0.0
    truth: dict[Annotated[str, msgspec.Meta(max_length=64)], Any] | None = None
    max_age_ms: Millis = 0.0
    decide: bool = True
    policy: Policy = "latest"
    fault: Text | None = None
    tag: Tag = ""
    routed: Seconds = 0.0


class Welcome(_Message, tag="welcome"):
    pass


#: the workers a restarted local worker replaces, newest first: the one its supervisor saw die
#: and the earlier ones of its slot (a restarted worker can die before it joins, so the router
#: may never have heard of the newest); at most REPLACES_MAX
REPLACES_MAX = 8
Replaces = Annotated[list[Name], msgspec.Meta(max_length=REPLACES_MAX)]


class Ready(_Message, tag="ready"):
    worker: Name
    replaces: Replaces = []
    credits: Annotated[int, msgspec.Meta(ge=0, le=MAX_ITEMS)] = 0
    credits_open: Annotated[int, msgspec.Meta(ge=0, le=MAX_ITEMS)] = 0
    done: _items(FrameRef) = []


class Heartbeat(_Message, tag="heartbeat"):
    worker: Name
    replaces: Replaces = []
    holding: _items(TaggedRef) = []
    credits_open: Annotated[int, msgspec.Meta(ge=0, le=MAX_ITEMS)] = 0
    busy: bool = False
    #: what the worker rejected on its frame socket, by why
    rejected: dict[Annotated[str, msgspec.Meta(max_length=32)], Count] = {}
    #: why it runs another backend than the configured one ("" when it does not)
    backend_note: Text = ""


class Bye(_Message, tag="bye"):
    worker: Name
    done: _items(FrameRef) = []


class Result(_Message, tag="result"):
    cam: CameraId
    seq: Count
    ts: Seconds
    decision: Literal["PASS", "FAIL", "NO_DECISION"]
    tag: Tag
    epoch: Count = 0
    decided_ts: Seconds = 0.0
    reason: Text = ""
    defect_area: Count = 0
    defect_count: Count = 0
    boxes: _items(Annotated[list[Count], msgspec.Meta(min_length=4, max_length=4)]) = []
    model_id: Text = ""
    worker: Text = ""
    backend: Text = ""
    latency_ms: dict[Annotated[str, msgspec.Meta(max_length=32)], Millis] = {}
    truth: dict[Annotated[str, msgspec.Meta(max_length=64)], Any] | None = None
    mask_shape: Shape | None = None
    #: the mask is all background: it is not sent (``mask_shape`` says its size)
    mask_empty: bool = False
    image_shape: Shape | None = None
    #: a JPEG preview of the frame travels as the last part (``edge.imageops.preview_jpeg``)
    preview: Literal["jpeg"] | None = None
    preview_shape: Shape | None = None


#: fields of a ``result`` that stay inside the line: the collector publishes a result without them
RESULT_UNPUBLISHED = ("tag", "mask_empty", "image_shape")
#: fields of a published result that are there only when they say something (not None)
RESULT_OPTIONAL = ("mask_shape", "preview", "preview_shape")
#: the header fields every published result has (docs/protocol.md), in the Struct's order
RESULT_FIELDS = tuple(
    f for f in Result.__struct_fields__ if f not in RESULT_UNPUBLISHED and f not in RESULT_OPTIONAL
)


class Drop(_Message, tag="drop"):
    """Frames that will never have a result; ``tags[i]`` is the tag of ``seqs[i]``."""

    cam: CameraId
    seqs: _items(Count)
    tags: _items(Tag)
    reason: Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}$")]
    epoch: Count = 0


class Stats(_Message, tag="stats"):
    """A camera's counters (sealed: only the line's own camera processes can send it)."""

    cam: CameraId
    epoch: Count
    captured: Count
    policy: Policy = "latest"
    sent: Count = 0
    pending_from: Count = 0
    drops: dict[Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}$")], _items(Count)] = {}
    connected: bool = False
    down: Text | None = None
    disconnects: Count = 0
    reconnects: Count = 0
    last_connected_ts: Seconds = 0.0
    gap_s: Seconds = 0.0
    pending: Count = 0
    ended: bool = False
    final: bool = False


class RouterStats(_Message, tag="router_stats"):
    """What the router holds and did (sealed)."""

    router_epoch: Count
    queues: dict[CameraId, Count] = {}
    workers: Count = 0
    worker_states: dict[Name, dict[Annotated[str, msgspec.Meta(max_length=32)], int]] = {}
    credits: int = 0
    busy: Count = 0
    inflight: Count = 0
    holding: dict[CameraId, dict[Annotated[str, msgspec.Meta(max_length=20)], _items(Count)]] = {}
    rejected: dict[Annotated[str, msgspec.Meta(max_length=32)], dict[str, Count]] = {}
    dispatched: Count = 0
    #: worker -> why it runs another backend than the config asked for (workers that do not: left out)
    backend_notes: dict[Name, Text] = {}
    final: bool = False


class Supervisor(_Message, tag="supervisor"):
    """The supervisor's view of the processes (sealed)."""

    not_ready: _items(Text) = []
    restarts: dict[Name, Count] = {}
    pids: dict[Name, Count] = {}


class SinkStats(_Message, tag="sink_stats"):
    """A plant sink's counters, totals of its process (sealed; edge/sinks/feed.py)."""

    sink: Literal["mqtt", "opcua"]
    epoch: Count
    sent: Count = 0
    dropped: dict[Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}$")], Count] = {}
    reconnects: Count = 0
    up: bool = False
    queued: Count = 0


#: every message kind of the line
MESSAGE_TYPES = (
    Hello,
    Credit,
    Frame,
    Welcome,
    Ready,
    Heartbeat,
    Bye,
    Result,
    Drop,
    Stats,
    RouterStats,
    Supervisor,
    SinkStats,
)
#: what each receiver accepts, by socket
FROM_CAMERAS = msgspec.json.Decoder(Hello | Frame)
FROM_ROUTER_TO_CAMERA = msgspec.json.Decoder(Credit)
FROM_WORKERS = msgspec.json.Decoder(Ready | Heartbeat | Bye)
FROM_ROUTER_TO_WORKER = msgspec.json.Decoder(Welcome | Frame)
TO_COLLECTOR = msgspec.json.Decoder(Result | Drop | Stats | RouterStats | Supervisor | SinkStats)
#: kinds that only the line's own processes send: they carry a seal (see ``seal``)
SEALED_KINDS = frozenset({"hello", "credit", "stats", "router_stats", "supervisor", "sink_stats"})


def decode(raw: bytes | memoryview, decoder: msgspec.json.Decoder) -> dict[str, Any]:
    """Check a header against the kinds ``decoder`` accepts; return it as a dict of checked
    values (defaults filled in, unknown fields left out). Raises ProtocolError, never anything
    else, whatever the bytes; NewerProtocolError for a kind that carries ``v`` with a newer
    major version than ``PROTOCOL_VERSION``."""
    if len(raw) > MAX_HEADER_BYTES:
        msg = f"header of {len(raw)} bytes (at most {MAX_HEADER_BYTES})"
        raise ProtocolError(msg)
    try:
        message = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"bad header: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed header: {exc}") from None
    except RecursionError:
        raise ProtocolError("malformed header: nested too deeply") from None
    kind = message.__struct_config__.tag
    version = getattr(message, "v", PROTOCOL_VERSION)
    if version > PROTOCOL_VERSION:
        msg = (
            f"{kind} message of protocol version {version}, newer than this lineside's "
            f"{PROTOCOL_VERSION}: upgrade lineside here to the sender's version"
        )
        raise NewerProtocolError(msg)
    out = msgspec.structs.asdict(message)
    out["t"] = kind
    return out


def admit(
    raw: bytes,
    decoder: msgspec.json.Decoder,
    reject: Callable[[str, str], None],
    *,
    key: bytes | None = None,
    mac: bytes | memoryview | None = None,
    cameras: Container[str] | None = None,
) -> dict[str, Any] | None:
    """A received header (``decode``) and what proves it may be acted on: a kind of
    ``SEALED_KINDS`` must carry ``mac``, this line's seal of ``raw`` (``unseal`` with ``key``),
    and a message that names a camera (``cam``) must name one of ``cameras`` (when given).
    The seal comes first: a stranger's message is ``unauthenticated`` whatever camera it names.
    Returns the header, or None after counting why not with ``reject(text, why)`` (a
    ``Rejections`` or what counts like one): ``malformed`` or ``version``, ``unauthenticated``,
    ``unknown``. Every receiver of the collector and the router admits its messages here."""
    try:
        header = decode(raw, decoder)
    except ProtocolError as exc:
        reject(str(exc), exc.why)
        return None
    kind = header["t"]
    if kind in SEALED_KINDS and (key is None or mac is None or not unseal(key, raw, mac)):
        reject(f"{kind} message not sealed by this line", "unauthenticated")
        return None
    cam = header.get("cam")
    if cameras is not None and cam is not None and cam not in cameras:
        reject(f"{kind} for camera {cam!r}, which this line does not have", "unknown")
        return None
    return header


# -- what proves that a message comes from this line -------------------------------------
# The supervisor makes a random key per run and hands it to the processes it starts (never
# to a remote worker, never on a socket). A camera tags each frame with an HMAC of its name
# (camera, epoch, seq); whoever reports on that frame (a worker's result or drop, the
# router's drop) carries the tag, and the router and the collector check it. A message only
# the line's own processes send (camera stats, the router's report, credit, hello, the
# supervisor's status) is sealed: an HMAC of its header bytes goes as an extra frame. So a
# stranger, or even an authenticated remote worker, cannot make up a frame, raise a
# camera's captured count, or report on a frame it was never given.

TAG_HEX = 32  # 128 bits


def frame_tag(key: bytes, cam: str, epoch: int, seq: int) -> str:
    return hmac.new(key, f"{cam}/{epoch}/{seq}".encode(), hashlib.sha256).hexdigest()[:TAG_HEX]


def tag_ok(key: bytes, cam: str, epoch: int, seq: int, tag: str) -> bool:
    return hmac.compare_digest(frame_tag(key, cam, epoch, seq), tag)


def seal(key: bytes, header: dict[str, Any]) -> list[bytes]:
    """The frames of a sealed message: its header and the header's HMAC."""
    raw = encode_header(header)
    return [raw, hmac.new(key, raw, hashlib.sha256).digest()]


def unseal(key: bytes, raw: bytes | memoryview, mac: bytes | memoryview) -> bool:
    """Whether ``mac`` seals ``raw`` with this line's key."""
    return hmac.compare_digest(hmac.new(key, bytes(raw), hashlib.sha256).digest(), bytes(mac))
