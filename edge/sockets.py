"""Every ZeroMQ socket of the daemon is made here, so its settings live in one place.

Options are set before bind/connect (a high-water mark set afterwards does not
apply to existing pipes). LINGER is bounded so that close never hangs on a dead
peer. CONFLATE is never used: it breaks multipart messages.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

import zmq

from converter.errors import LinesideError

log = logging.getLogger(__name__)

#: how long close() may keep unsent messages for a peer, in ms
LINGER_MS = 500


class EndpointError(LinesideError):
    """An endpoint cannot be bound (port in use, bad address)."""


def make_socket(
    ctx: zmq.Context,
    kind: int,
    *,
    sndhwm: int = 1000,
    rcvhwm: int = 1000,
    linger_ms: int = LINGER_MS,
    sndtimeo_ms: int = -1,
    rcvtimeo_ms: int = -1,
    identity: bytes | None = None,
    immediate: bool = False,
) -> zmq.Socket:
    """A socket with its options set; bind or connect it with ``bind``/``connect`` below."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.SNDTIMEO, sndtimeo_ms)
    sock.setsockopt(zmq.RCVTIMEO, rcvtimeo_ms)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if immediate:
        # Queue only to completed connections, so a send to an absent peer fails fast
        # (EAGAIN) instead of filling a pipe that nobody reads.
        sock.setsockopt(zmq.IMMEDIATE, 1)
    if kind == zmq.ROUTER:
        # An unroutable identity raises instead of silently dropping the message.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return sock


def bind(sock: zmq.Socket, endpoint: str) -> None:
    """Bind, turning 'address in use' and bad addresses into one clear line."""
    if endpoint.startswith("ipc://"):
        path = Path(endpoint[len("ipc://") :])
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == errno.EADDRINUSE:
            msg = (
                f"cannot bind {endpoint}: address already in use; stop the other lineside "
                f"(or whatever holds it) or choose another endpoint in the config"
            )
        else:
            msg = f"cannot bind {endpoint}: {exc.strerror}; check the endpoint in the config"
        raise EndpointError(msg) from None


def connect(sock: zmq.Socket, endpoint: str) -> None:
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        msg = f"cannot connect to {endpoint}: {exc.strerror}; check the endpoint in the config"
        raise EndpointError(msg) from None


def close_all(ctx: zmq.Context, *socks: zmq.Socket | None) -> None:
    """Close sockets with a bounded linger and terminate the context (never hangs)."""
    for sock in socks:
        if sock is not None and not sock.closed:
            sock.close(linger=LINGER_MS)
    ctx.term()


def remove_ipc_file(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        with contextlib.suppress(OSError):
            os.unlink(endpoint[len("ipc://") :])
