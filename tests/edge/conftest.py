"""Fixtures shared by the edge tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``tiny_fs(size_bytes)`` mounts a real tmpfs that small and returns its path, so a
    test can fill a disk for real (ENOSPC). Skips where mounting is not allowed (not
    root, or a container without CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(size_bytes: int) -> Path:
        if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a real full disk needs root to mount a tiny tmpfs")
        target = tmp_path / f"tinyfs{len(mounted)}"
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(target)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tiny tmpfs here: {done.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=10, check=False)


# -- ZeroMQ sockets that never hang a test -------------------------------------------------------
# As pyzmq's own test base (zmq.tests.BaseZMQTestCase): every socket a test makes through the
# ``socket`` fixture is closed with linger 0 at teardown and the context is then terminated, so
# a failing test cannot leave a socket that blocks term(); and every receive the test waits on
# goes through ``recv``, which polls with a timeout and fails with what it waited for, so a
# regression fails in seconds instead of at pytest-timeout's global limit.

#: seconds a test waits for a message it expects (a worker's first inference included)
RECV_TIMEOUT_S = 10.0
#: seconds term() may take once every socket is closed; longer means a socket was left open
TERM_TIMEOUT_S = 5.0


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    """A ZeroMQ context of its own for one test, terminated at teardown (a test fails when it
    cannot be: a socket made outside the ``socket`` fixture was left open)."""
    ctx = zmq.Context()
    yield ctx
    # term() blocks for as long as a socket is open: run it aside, so a leak is an error
    # that names itself instead of a hung session.
    ended = threading.Thread(target=ctx.term, daemon=True)
    ended.start()
    ended.join(TERM_TIMEOUT_S)
    if ended.is_alive():
        pytest.fail(
            f"the ZeroMQ context did not terminate within {TERM_TIMEOUT_S:.0f} s: a socket was left open"
        )


@pytest.fixture
def socket(context: zmq.Context) -> Iterator[Callable[..., zmq.Socket]]:
    """``socket(zmq.PULL, identity=b"w1")``: a socket of the test's ``context``, with linger 0
    (nothing waits at close for an unsent message) and closed at teardown."""
    made: list[zmq.Socket] = []

    def make(kind: int, identity: bytes | None = None) -> zmq.Socket:
        sock = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(0)


@pytest.fixture
def recv() -> Callable[..., list[bytes]]:
    """``recv(sock, timeout=RECV_TIMEOUT_S, what="a message")``: the next multipart message of
    ``sock``; fails the test, naming ``what``, when none comes within ``timeout`` seconds."""

    def receive(sock: zmq.Socket, timeout: float = RECV_TIMEOUT_S, what: str = "a message") -> list[bytes]:
        if not sock.poll(int(timeout * 1000)):
            kind = zmq.SocketType(sock.socket_type).name
            pytest.fail(f"waited {timeout:g} s on the {kind} socket for {what}; nothing came")
        return sock.recv_multipart()

    return receive
