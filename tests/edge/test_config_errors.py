"""A bad config stops `lineside run` with one clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]

GOOD = {"model": {"package": "pkg"}, "cameras": [{"id": "a", "source": "synthetic"}]}


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**GOOD, "camras": []}, "unknown key 'camras'; allowed here: name, model, cameras"),
        (
            {**GOOD, "model": {"backend": "tensorrtx"}},
            "model.backend is 'tensorrtx'; allowed: auto, onnxruntime",
        ),
        ({**GOOD, "workers": {"count": "two"}}, "workers.count must be int, got 'two'"),
        ({**GOOD, "workers": {"max_batch": 0}}, "workers.max_batch is 0; must be between 1 and 256"),
        ({**GOOD, "cameras": []}, "cameras is empty"),
        (
            {**GOOD, "cameras": [{"id": "a", "policy": "newest"}]},
            "cameras[0].policy is 'newest'; allowed: latest",
        ),
        ({**GOOD, "cameras": [{"id": "a"}, {"id": "a"}]}, "cameras[1].id is 'a'; camera ids must be unique"),
        ({**GOOD, "cameras": [{"source": "folder"}]}, "cameras[0].options.path is missing"),
        ({**GOOD, "endpoints": {"publish": "http://x"}}, "endpoints.publish is 'http://x'; must start with"),
        ({**GOOD, "cameras": [{"roi": [0, 0, 10]}]}, "cameras[0].roi is [0, 0, 10]"),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(tmp_path: Path, data: dict, expected: str) -> None:
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lineside: error: ")
    return lines[0]


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    line = one_error_line(run_cli("run", "--config", str(tmp_path / "missing.yaml")))
    assert "config file not found" in line

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("cameras: [\n  - id: a\n  oops")
    assert "not valid YAML at line" in one_error_line(run_cli("run", "--config", str(bad_yaml)))

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({**GOOD, "sinkz": {}}))
    assert "unknown key 'sinkz'" in one_error_line(run_cli("run", "--config", str(unknown)))

    no_package = tmp_path / "nopkg.yaml"
    no_package.write_text(yaml.safe_dump(GOOD))
    assert "no such model package folder" in one_error_line(run_cli("run", "--config", str(no_package)))

    bad_option = tmp_path / "badopt.yaml"
    bad_option.write_text(yaml.safe_dump({**GOOD, "cameras": [{"id": "a", "options": {"colour": 1}}]}))
    assert "colour" in one_error_line(run_cli("run", "--config", str(bad_option)))


def test_port_in_use_stops_startup_with_one_line(trained_package: Path, tmp_path: Path) -> None:
    import socket

    from tests.edge.daemon import line_config, synthetic_camera

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = line_config(tmp_path, trained_package, [synthetic_camera("a", size=64)])
        cfg["endpoints"]["publish"] = f"tcp://127.0.0.1:{port}"
        path = tmp_path / "line.yaml"
        path.write_text(yaml.safe_dump(cfg))
        line = one_error_line(run_cli("run", "--config", str(path), "--duration", "1"))
    assert f"cannot bind tcp://127.0.0.1:{port}: address already in use" in line


def test_loading_a_config_makes_no_run_folder(tmp_path: Path) -> None:
    """Only a running line has a run folder (before: every load made one, and they piled up)."""
    import glob
    import os
    import tempfile

    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "lineside-*")))
    cfg = load_config(path)
    assert cfg.run_dir == "" and set(glob.glob(os.path.join(tempfile.gettempdir(), "lineside-*"))) == before
    with pytest.raises(ConfigError, match=r"endpoints.frames .* needs the line's run folder"):
        cfg.endpoint("frames")
