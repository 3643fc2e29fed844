"""A line process that does not stop in time says where it was stuck before the supervisor
kills it (edge/process.py registers the handler, edge/supervisor.py asks)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

from edge.supervisor import dump_stacks


def _wait_here_forever() -> None:
    while True:
        time.sleep(0.02)


def _stuck(ready) -> None:
    from edge.process import setup_process

    setup_process("test:stuck", logging.INFO)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stop that never comes
    ready.set()
    _wait_here_forever()


def test_a_process_that_does_not_stop_prints_its_stack_before_the_kill(capfd) -> None:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    process = ctx.Process(target=_stuck, args=(ready,), daemon=True)
    process.start()
    try:
        assert ready.wait(60), "the child did not start"
        process.terminate()
        process.join(0.3)
        assert process.is_alive()
        dump_stacks(process, wait_s=0.5)
        deadline = time.monotonic() + 10
        err = ""
        while "_wait_here_forever" not in err and time.monotonic() < deadline:
            err += capfd.readouterr().err
            time.sleep(0.05)
        assert "_wait_here_forever" in err and "_stuck" in err, err[-2000:]
        assert process.is_alive()
    finally:
        process.kill()
        process.join(5)


# A process whose main thread waits on its stop (as every line process's loop does), stopped
# by its own SIGTERM handler, as the line's processes are.
WAITS_ON_ITS_STOP = """
import signal
from edge.process import StopEvent
stop = StopEvent()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("ready", flush=True)
while not stop.wait(0.0001):
    pass
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the test may still be sending them
print("stopped", flush=True)
"""


def test_a_stream_of_sigterms_stops_a_process_instead_of_hanging_it() -> None:
    """A ``kill -9`` of the supervisor brings each child several parent-death SIGTERMs (one
    each time the orphan passes to another of the dying supervisor's threads), so handlers
    nest. With a plain ``threading.Event`` as the stop, a nested ``set()`` waits for the lock
    its own thread holds, for ever: this child hung in 12 and 13 of 20 tries so (and the
    router did, in CI). Ten tries all stop with the StopEvent."""
    for attempt in range(10):
        child = subprocess.Popen([sys.executable, "-c", WAITS_ON_ITS_STOP], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            for _ in range(2000):  # one after another, so that they land while a handler runs
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    break
            try:
                out, _ = child.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"try {attempt + 1}: the child hung in its SIGTERM handler") from None
            assert child.returncode == 0 and "stopped" in out, (child.returncode, out)
        finally:
            child.kill()
            child.wait(5)
