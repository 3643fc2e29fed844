"""What this CPU is, from /proc/cpuinfo: its model name and its feature flags.

A speed timed by a gate holds for one CPU model only (OpenVINO FP32 was 0.6x ONNX Runtime on
an AMX Xeon and 1.1x on an AVX2 EPYC), so the gates record ``cpu_model()`` beside their speeds
and ``backend: auto`` trusts a speed only on the same model. The flags say whether the CPU has
the dot-product instructions that int8 kernels need (VNNI), which OpenVINO does not name.
"""

from __future__ import annotations

import platform


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().splitlines()
    except OSError:
        return []


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    for line in _lines(path):
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8480+"), or what Python
    knows of it where /proc/cpuinfo cannot be read."""
    for line in _lines(path):
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()
