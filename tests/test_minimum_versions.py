"""pyproject.toml's floors and `.ci/minimum-versions.txt`, the set the suite was run on at those
floors, stay in step: raising a floor without checking the oldest set again fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parent.parent


def pinned() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def floors() -> dict[str, Version]:
    """Each requirement's lower bound, of the base install and the `train` extra on x86_64."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for text in project["dependencies"] + project["optional-dependencies"]["train"]:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"platform_machine": "x86_64"}):
            continue
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lower, f"{text}: give it a floor (>=), and its oldest version in .ci/minimum-versions.txt"
        found[canonicalize_name(req.name)] = lower[0]
    return found


def test_every_floor_is_the_version_in_the_oldest_set():
    pins, wanted = pinned(), floors()
    assert set(pins) == set(wanted), set(pins) ^ set(wanted)
    for name, floor in wanted.items():
        # a floor of 25 or 3.12 is met by the oldest set's 25.1.2 or 3.12.0, not by 26 or 3.13
        assert pins[name].release[: len(floor.release)] == floor.release, (name, floor, pins[name])
