"""What every spawned lineside process does first."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: how often an orphan watch looks at its parent, seconds
PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


class StopEvent(threading.Event):
    """A process's stop flag: a ``threading.Event`` that a signal handler may also set.

    ``Event.set()`` takes the event's lock, and that lock is not re-entrant. A Python signal
    handler runs in the main thread between two bytecodes, so it can run while that same
    thread holds the lock (inside an earlier handler's ``set()``, or inside its own
    ``wait()``); then its ``set()`` waits for itself forever. A second SIGTERM is not rare:
    Linux sends the parent-death signal each time the orphan is handed to another thread of
    the dying parent, so a ``kill -9`` of the supervisor brings its children several
    SIGTERMs in a row (CI once saw the router hang so, three handlers deep, until its
    watchdog ended it 16 s later). A re-entrant lock lets the nested ``set()`` through.
    """

    def __init__(self) -> None:
        super().__init__()
        # CPython's Event does all its work through self._cond; if that ever changed, the
        # nested set() would hang again, and tests/edge/test_process.py would say so
        self._cond = threading.Condition(threading.RLock())


def setup_process(role: str, log_level: int) -> None:
    """Log with the process role in every line; keep math libraries to their share of cores."""
    logging.basicConfig(
        level=log_level,
        format=f"%(asctime)s %(levelname)s [{role}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # OpenCV's own thread pool fights the inference threads for the same cores.
    import cv2

    cv2.setNumThreads(1)
    os.environ.setdefault("LINESIDE_ROLE", role)
    # the supervisor asks for every thread's stack before it kills a process that did not
    # stop in time, so the log says where it was stuck
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def die_with_parent(on_orphan: Callable[[], None], grace_s: float = 15.0) -> None:
    """Stop this process when the process that spawned it dies, by any cause (``kill -9`` too).

    Two mechanisms, so that neither a missed signal nor a stuck stop leaves a process behind:
    on Linux the kernel sends SIGTERM at the parent's death (``PR_SET_PDEATHSIG``; the
    process's own SIGTERM handler then stops it as usual), and everywhere a thread watches
    the parent: when it is gone it calls ``on_orphan`` (the same stop), and if the process
    is still alive ``grace_s`` later, it ends it.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # started by hand (`lineside worker`), not by a supervisor
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    parent_pid = parent.pid

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        log.warning("the supervisor (pid %d) is gone; stopping", parent_pid)
        # A C watchdog too: a process stuck where this thread cannot run (the interpreter's
        # exit, which freezes daemon threads) still ends, with every thread's stack on stderr.
        # (CI once saw an orphaned router alive 20 s after its supervisor's kill -9.)
        faulthandler.dump_traceback_later(grace_s + 1.0, exit=True)
        on_orphan()
        time.sleep(grace_s)
        # The stop did not finish (a native call stuck for good): the process must not linger.
        log.error("still running %.0f s after the supervisor died; exiting", grace_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def leave_run_dir(run_dir: str) -> None:
    """An orphan's last act: remove the line's run folder if it is empty (the supervisor,
    which would have removed it, is gone; whichever process ends last succeeds)."""
    parent = multiprocessing.parent_process()
    if run_dir and parent is not None and not parent.is_alive():
        with contextlib.suppress(OSError):
            os.rmdir(run_dir)
