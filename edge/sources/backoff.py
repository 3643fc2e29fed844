"""Capped exponential backoff with jitter, for reconnecting cameras and restarting workers.

Jitter spreads the retries of many cameras that dropped at the same moment (a switch
reboot), so they do not hammer the network or the NVR in lockstep.
"""

from __future__ import annotations

import random
import time
from typing import Protocol

__all__ = ["Backoff"]


class _Waitable(Protocol):
    def wait(self, timeout: float | None = None) -> bool: ...


class Backoff:
    """Delays ``initial_s, initial_s*factor, ...`` up to ``cap_s``, each times ``1 ± jitter``.

    The jittered delay never exceeds ``cap_s``: the cap is the longest a camera stays
    unattended. ``reset()`` after a success starts again from ``initial_s``. Pass a seeded
    ``random.Random`` for a reproducible sequence.
    """

    def __init__(
        self,
        initial_s: float = 0.5,
        cap_s: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial_s <= cap_s:
            msg = f"backoff needs 0 < initial_s <= cap_s, got initial_s={initial_s}, cap_s={cap_s}"
            raise ValueError(msg)
        if factor < 1:
            msg = f"backoff factor must be >= 1, got {factor}"
            raise ValueError(msg)
        if not 0 <= jitter < 1:
            msg = f"backoff jitter is a fraction in [0, 1), got {jitter}"
            raise ValueError(msg)
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        #: delays handed out since the last reset (the reconnect attempts)
        self.attempts = 0
        self._base = initial_s

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds; advances the sequence."""
        base = self._base
        # Grow iteratively and stop at the cap, so thousands of attempts never overflow.
        self._base = min(self.cap_s, base * self.factor)
        self.attempts += 1
        delay = base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))
        return min(delay, self.cap_s)

    def reset(self) -> None:
        """Start again from ``initial_s`` (call after a successful connect)."""
        self.attempts = 0
        self._base = self.initial_s

    def wait(self, stop: _Waitable | None = None) -> bool:
        """Sleep the next delay; with a ``threading``/``multiprocessing`` Event, wake early
        when it is set. Returns True when stopped early (shutdown), else False."""
        delay = self.next_delay()
        if stop is None:
            time.sleep(delay)
            return False
        return bool(stop.wait(delay))
