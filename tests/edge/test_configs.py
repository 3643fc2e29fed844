"""The example configs in configs/ stay valid as the schema changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.cameras, path
    assert all(cam.id for cam in cfg.cameras)


def test_there_are_the_three_documented_examples() -> None:
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "video.yaml", "rtsp-tensorrt.yaml"}
