"""Batch profiles and shape planning for TensorRT engines (plain Python).

An engine built with a dynamic batch accepts any batch between the profile's min and
max, and is fastest at opt. The runner splits a larger batch into chunks of at most
max and pads a smaller one up to min, so the worker never hands TensorRT a shape the
profile does not cover.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from converter.errors import LinesideError


class ProfileError(LinesideError, ValueError):
    """A batch profile or size given on the command line is not valid."""


@dataclass(frozen=True)
class BatchProfile:
    """min <= opt <= max batch sizes of one TensorRT optimization profile."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            msg = f"batch profile {self.min},{self.opt},{self.max}: need 1 <= min <= opt <= max"
            raise ProfileError(msg)

    def shapes(
        self, height: int, width: int, channels: int, layout: str = "NHWC"
    ) -> dict[str, tuple[int, ...]]:
        """min/opt/max input shapes for ``IOptimizationProfile.set_shape``."""

        def shape(batch: int) -> tuple[int, ...]:
            return (batch, height, width, channels) if layout == "NHWC" else (batch, channels, height, width)

        return {"min": shape(self.min), "opt": shape(self.opt), "max": shape(self.max)}

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


def parse_batch_profile(text: str) -> BatchProfile:
    """``"1,4,8"`` -> BatchProfile(1, 4, 8); ``"8"`` -> BatchProfile(1, 8, 8)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        msg = f"--batch {text!r}: expected MIN,OPT,MAX (e.g. 1,4,8) or one number"
        raise ProfileError(msg) from None
    if len(values) == 1:
        return BatchProfile(1, values[0], values[0])
    if len(values) != 3:
        msg = f"--batch {text!r}: expected MIN,OPT,MAX (e.g. 1,4,8) or one number"
        raise ProfileError(msg)
    return BatchProfile(*values)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20}
_UNITS |= {"g": 10**9, "gb": 10**9, "gib": 2**30}


def parse_size(text: str) -> int:
    """``"512MiB"``, ``"2GiB"``, ``"1.5GB"``, ``"1048576"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        msg = f"size {text!r}: expected a number with an optional unit (MiB, GiB, MB, GB)"
        raise ProfileError(msg)
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        msg = f"size {text!r} must be positive"
        raise ProfileError(msg)
    return value


@dataclass(frozen=True)
class Chunk:
    """One engine call: rows ``start:start+count`` of the batch, run as ``run_batch`` rows (padded)."""

    start: int
    count: int
    run_batch: int


def plan_chunks(n: int, profile: BatchProfile) -> list[Chunk]:
    """Split a batch of ``n`` images into engine calls the profile accepts."""
    if n <= 0:
        return []
    chunks = []
    for start in range(0, n, profile.max):
        count = min(profile.max, n - start)
        chunks.append(Chunk(start, count, max(count, profile.min)))
    return chunks
