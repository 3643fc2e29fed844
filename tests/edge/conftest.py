"""Fixtures shared by the edge tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


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
