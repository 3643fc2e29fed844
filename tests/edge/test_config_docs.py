"""docs/config.md and docs/training-config.md are generated from the schemas (edge/config_docs.py)
and fail here when stale, with the command that refreshes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge.config_docs import REFRESH, line_sections, main, recipe_keys, rendered

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_config_docs_are_fresh() -> None:
    for rel, text in rendered().items():
        committed = (ROOT / rel).read_text() if (ROOT / rel).is_file() else ""
        assert committed == text, f"{rel} is stale; refresh it with: {REFRESH}"


def test_every_line_config_key_is_documented() -> None:
    from edge.config import LineConfig

    keys = [k for _, _, ks in line_sections(LineConfig) for k in ks]
    paths = {k.path for k in keys}
    assert {"name", "cameras[].fps", "sinks.decision_log", "endpoints.work", "security.keys"} <= paths
    assert "base_dir" not in paths and "run_dir" not in paths  # set by the program, not the file
    missing = [k.path for k in keys if not k.meaning]
    assert not missing, f"no `#:` comment above these fields in edge/config.py: {missing}"
    fps = next(k for k in keys if k.path == "cameras[].fps")
    assert (fps.type, fps.default, fps.allowed) == ("number", "`5.0`", ">= 0 (0 = as fast as it can)")
    backend = next(k for k in keys if k.path == "model.backend")
    assert backend.allowed == "`auto`, `onnxruntime`, `tensorrt`, `openvino`"


def test_every_recipe_key_is_documented() -> None:
    keys = {k.path: k for k in recipe_keys()}
    missing = [path for path, k in keys.items() if not k.meaning]
    assert not missing, f"no `#:` comment above these fields in training/config.py: {missing}"
    assert keys["loss"].allowed.startswith("`bce`, `dice`, `adaptive`")
    assert keys["input.augment.rotate"].allowed == "between 0 and 45 (0: off)"
    assert keys["train.steps_per_epoch"].allowed == ">= 1"
    assert keys["dataset.image_size"].type == "integer or list of integer or null"
    assert keys["dataset.synthetic.size"].meaning == "image side in pixels"


@dataclass
class _Broker:
    """A nested section."""

    #: broker host
    host: str = "localhost"


@dataclass
class _Mqtt:
    """An optional section."""

    #: the broker
    broker: _Broker = field(default_factory=_Broker)
    #: QoS of results
    qos: int = 1


@dataclass
class _Item:
    """One of a list."""

    #: its weight
    weight: float | None = None


@dataclass
class _Sinks:
    """Sections below sections."""

    #: where results go
    log: str = "x"
    mqtt: _Mqtt | None = None
    items: list[_Item] = field(default_factory=list)


def test_nested_sections_are_found_without_naming_them() -> None:
    """A new section (sinks.mqtt) shows up after a regenerate, however deep or optional."""
    sections = {path: (intro, keys) for path, intro, keys in line_sections(_Sinks, "sinks")}
    assert list(sections) == ["sinks", "sinks.mqtt", "sinks.mqtt.broker", "sinks.items[]"]
    assert "optional section" in sections["sinks.mqtt"][0]
    (host,) = sections["sinks.mqtt.broker"][1]
    assert (host.path, host.type, host.default, host.meaning) == (
        "sinks.mqtt.broker.host",
        "text",
        "`localhost`",
        "broker host",
    )
    (weight,) = sections["sinks.items[]"][1]
    assert (weight.path, weight.type, weight.default) == ("sinks.items[].weight", "number or null", "`null`")


def test_check_reports_stale_files_and_the_refresh_writes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docs").mkdir()
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert REFRESH in capsys.readouterr().err
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--check", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "docs" / "config.md").read_text().startswith("# The line config")
