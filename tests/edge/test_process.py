"""A line process that does not stop in time says where it was stuck before the supervisor
kills it (edge/process.py registers the handler, edge/supervisor.py asks)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
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
