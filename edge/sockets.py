"""Every ZeroMQ socket of the daemon is made here, so its settings live in one place.

Options are set before bind/connect (a high-water mark set afterwards does not
apply to existing pipes). LINGER is bounded so that close never hangs on a dead
peer. CONFLATE is never used: it breaks multipart messages.

With CURVE keys (``security.keys``), every tcp:// socket the line binds is a CURVE server
whose clients a ZAP handler checks against the keys folder, and every tcp:// socket that
connects is a CURVE client (docs/security.md). ipc:// endpoints live in the line's 0700
run folder, which already keeps other users out, and stay plain.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from converter.errors import LinesideError
from edge.keys import JOIN, SUBSCRIBE, CurveKeys

log = logging.getLogger(__name__)

#: how long close() may keep unsent messages for a peer, in ms
LINGER_MS = 500

#: the ZAP handler of each context that has a CURVE server socket, by id(context)
_authenticators: dict[int, ThreadAuthenticator] = {}


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


def bind(sock: zmq.Socket, endpoint: str, keys: CurveKeys | None = None) -> None:
    """Bind, turning 'address in use' and bad addresses into one clear line; with ``keys``,
    a tcp endpoint is a CURVE server."""
    if endpoint.startswith("ipc://"):
        path = Path(endpoint[len("ipc://") :])
        path.parent.mkdir(parents=True, exist_ok=True)
    if keys is not None and endpoint.startswith("tcp://"):
        secure_server(sock, keys)
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


def connect(sock: zmq.Socket, endpoint: str, keys: CurveKeys | None = None) -> None:
    """Connect; with ``keys``, to a tcp endpoint as a CURVE client."""
    if keys is not None and endpoint.startswith("tcp://"):
        secure_client(sock, keys)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        msg = f"cannot connect to {endpoint}: {exc.strerror}; check the endpoint in the config"
        raise EndpointError(msg) from None


class _AllowedClients:
    """The ZAP check: a client's public key must be in the keys folder for the socket's domain.
    A refused key is logged once (a refused client retries every fraction of a second); past
    the first hundred keys, every thousandth refusal (someone is trying keys)."""

    def __init__(self, keys: CurveKeys) -> None:
        self.keys = keys
        self.refused: set[tuple[str, bytes]] = set()
        self.refusals = 0

    def callback(self, domain: str, client_key: bytes) -> bool:
        if client_key in self.keys.allowed(domain):
            return True
        self.refusals += 1
        new = (domain, client_key) not in self.refused
        if new and len(self.refused) < 100:
            self.refused.add((domain, client_key))
        elif self.refusals % 1000:
            return False
        log.warning(
            "refused a CURVE client on the %s endpoint(s) (#%d): its public key %s is not in %s",
            "publish" if domain == SUBSCRIBE else "frames/work/results",
            self.refusals,
            client_key.decode(),
            self.keys.describe(domain),
        )
        return False


def secure_server(sock: zmq.Socket, keys: CurveKeys) -> None:
    """Make ``sock`` (not yet bound) a CURVE server that accepts only authorized clients.

    A PUB socket only sends, so a subscriber key may connect to it; every other socket
    takes frames or results in, so it accepts only the keys that may join the line.
    The ZAP handler starts before the first bind: a CURVE server without one would
    accept any client that knows the server's public key."""
    public, secret = keys.server_pair()
    ctx = sock.context
    if id(ctx) not in _authenticators:
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("zmq.auth"))
        auth.start()
        provider = _AllowedClients(keys)
        auth.configure_curve_callback(JOIN, provider)
        auth.configure_curve_callback(SUBSCRIBE, provider)
        _authenticators[id(ctx)] = auth
    sock.zap_domain = (SUBSCRIBE if sock.type == zmq.PUB else JOIN).encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_server = True


def secure_client(sock: zmq.Socket, keys: CurveKeys) -> None:
    """Make ``sock`` (not yet connected) a CURVE client of the line's server key."""
    public, secret = keys.client_pair()
    sock.curve_serverkey = keys.server_public()
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def close_all(ctx: zmq.Context, *socks: zmq.Socket | None, linger_ms: int = LINGER_MS) -> None:
    """Close sockets with a bounded linger and terminate the context (never hangs)."""
    for sock in socks:
        if sock is not None and not sock.closed:
            sock.close(linger=linger_ms)
    auth = _authenticators.pop(id(ctx), None)
    if auth is not None:
        auth.stop()  # its ZAP socket lives in this context: term() would wait for it
    ctx.term()


def remove_ipc_file(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        with contextlib.suppress(OSError):
            os.unlink(endpoint[len("ipc://") :])
