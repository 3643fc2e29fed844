"""A bad config stops `lineside run` with one clear line and exit code 2."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge import config as config_module
from edge.config import ConfigError, LineConfig, load_config, parse_config
from tests.edge.daemon import one_error_line

ROOT = Path(__file__).resolve().parents[2]

GOOD = {"model": {"package": "pkg"}, "cameras": [{"id": "a", "source": "synthetic"}]}


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {**GOOD, "camras": []},
            "unknown key 'camras'; did you mean 'cameras'? (allowed here: name, model, cameras",
        ),
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


def test_port_in_use_stops_startup_with_one_line(line_package: Path, tmp_path: Path) -> None:
    import socket

    from tests.edge.daemon import line_config, synthetic_camera

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = line_config(tmp_path, line_package, [synthetic_camera("a", size=64)])
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


# -- every value the schema does not allow is refused at load, naming its key --------------------
def cam(**kw: Any) -> dict:
    """GOOD with one camera ``a`` carrying ``kw``."""
    return {**GOOD, "cameras": [{"id": "a", **kw}]}


def opts(source: str = "synthetic", **options: Any) -> dict:
    base = {"folder": {"path": "imgs"}, "opencv": {"uri": "rtsp://cam/s"}}.get(source, {})
    return cam(source=source, options={**base, **options})


NAN, INF = float("nan"), float("inf")

#: (config, the key the error must name, a piece of the rule it must state)
BAD_VALUES = [
    (cam(fps=NAN), "cameras[0].fps", "is nan; must be a finite number >= 0"),
    (cam(fps=INF), "cameras[0].fps", "is inf; must be a finite number >= 0"),
    (cam(fps=-INF), "cameras[0].fps", "must be a finite number"),
    (cam(fps=10**400), "cameras[0].fps", "must be a finite number"),  # too big for a float
    (cam(fps=-1), "cameras[0].fps", "must be >= 0"),
    (cam(max_age_ms=-1), "cameras[0].max_age_ms", "must be >= 0"),
    (cam(max_age_ms=NAN), "cameras[0].max_age_ms", "must be a finite number >= 0"),
    (cam(buffer=0), "cameras[0].buffer", "must be between 1 and 65536"),
    (cam(buffer=10**6), "cameras[0].buffer", "must be between 1 and 65536"),
    (cam(roi=[0, 0, 10]), "cameras[0].roi", "must be [x, y, w, h]"),
    (cam(roi=[0, 0, 0, 10]), "cameras[0].roi", "w, h > 0"),
    (cam(roi=[-1, 0, 10, 10]), "cameras[0].roi", "x, y >= 0"),
    (cam(open_timeout_s=0), "cameras[0].open_timeout_s", "must be > 0"),
    (cam(open_timeout_s=-1), "cameras[0].open_timeout_s", "must be > 0"),
    (cam(read_timeout_s=-1), "cameras[0].read_timeout_s", "must be > 0"),
    (cam(read_timeout_s=0), "cameras[0].read_timeout_s", "must be > 0"),
    (cam(silent_after_s=0), "cameras[0].silent_after_s", "must be > 0"),
    (cam(reconnect_initial_s=0), "cameras[0].reconnect_initial_s", "must be > 0"),
    (cam(reconnect_max_s=-1), "cameras[0].reconnect_max_s", "must be > 0"),
    (
        cam(reconnect_initial_s=5, reconnect_max_s=1),
        "cameras[0].reconnect_max_s",
        "must be >= reconnect_initial_s (5)",
    ),
    (cam(id="../../etc"), "cameras[0].id", "must be 1 to 64 of A-Z a-z 0-9 _ - ."),
    (cam(id=".hidden"), "cameras[0].id", "not starting with '.'"),
    (cam(id="a b"), "cameras[0].id", "must be 1 to 64"),
    (cam(id="a/b"), "cameras[0].id", "must be 1 to 64"),
    (cam(id="caméra"), "cameras[0].id", "must be 1 to 64"),
    (cam(id="a" * 65), "cameras[0].id", "must be 1 to 64"),
    (cam(ignore_mask="mask\n.png"), "cameras[0].ignore_mask", "no control characters"),
    (cam(options={1: "x"}), "cameras[0].options", "must have text keys"),
    (cam(options={"x": [1.0, NAN]}), "cameras[0].options.x[1]", "must be a finite number"),
    (opts(size=8), "cameras[0].options.size", "must be between 32 and 8192"),
    (opts(size="big"), "cameras[0].options.size", "must be int"),
    (opts(class_id=0), "cameras[0].options.class_id", "must be between 1 and"),
    (opts(defect_rate=1.5), "cameras[0].options.defect_rate", "must be between 0 and 1"),
    (opts(defect_rate=NAN), "cameras[0].options.defect_rate", "must be a finite number"),
    (opts(seed=-1), "cameras[0].options.seed", "must be >= 0"),
    (opts(bank=0), "cameras[0].options.bank", "must be between 1 and 1024"),
    (opts("folder", fps=-1), "cameras[0].options.fps", "must be >= 0"),
    (opts("folder", path=""), "cameras[0].options.path", "must be non-empty"),
    (opts("folder", loop="yes please"), "cameras[0].options.loop", "must be bool"),
    (opts("opencv", uri=""), "cameras[0].options.uri", "must be a device index"),
    (opts("opencv", open_timeout_s=0), "cameras[0].options.open_timeout_s", "must be > 0"),
    ({**GOOD, "workers": {"count": -1}}, "workers.count", "must be between 0 and 256"),
    ({**GOOD, "workers": {"count": 1000}}, "workers.count", "must be between 0 and 256"),
    ({**GOOD, "workers": {"max_wait_ms": -1}}, "workers.max_wait_ms", "must be >= 0"),
    ({**GOOD, "workers": {"max_wait_ms": INF}}, "workers.max_wait_ms", "must be a finite number >= 0"),
    ({**GOOD, "workers": {"heartbeat_timeout_s": -1}}, "workers.heartbeat_timeout_s", "must be >= 1.5"),
    ({**GOOD, "workers": {"heartbeat_timeout_s": 0.5}}, "workers.heartbeat_timeout_s", "must be >= 1.5"),
    ({**GOOD, "model": {"threads": -3}}, "model.threads", "must be between 0 and 1024"),
    ({**GOOD, "model": {"package": ""}}, "model.package", "must be non-empty"),
    ({**GOOD, "decision": {"threshold": 1}}, "decision.threshold", "must be between 0 and 1"),
    (
        {**GOOD, "decision": {"threshold": NAN}},
        "decision.threshold",
        "must be a finite number between 0 and 1",
    ),
    ({**GOOD, "decision": {"min_defect_area": -1}}, "decision.min_defect_area", "must be >= 0"),
    ({**GOOD, "decision": {"max_defect_area": -1}}, "decision.max_defect_area", "must be >= 0"),
    ({**GOOD, "decision": {"max_defect_count": -1}}, "decision.max_defect_count", "must be >= 0"),
    ({**GOOD, "endpoints": {"work": "tcp://"}}, "endpoints.work", "followed by an address"),
    (
        {**GOOD, "endpoints": {"work": "tcp://127.0.0.1:5570"}},
        "endpoints.publish",
        "must differ from endpoints.work",
    ),
    ({**GOOD, "sinks": {"ng_store_max_mb": -5}}, "sinks.ng_store_max_mb", "must be >= 1"),
    ({**GOOD, "sinks": {"ng_store_max_mb": 1e-9}}, "sinks.ng_store_max_mb", "must be >= 1"),
    ({**GOOD, "sinks": {"ng_store": "runs\x00ng"}}, "sinks.ng_store", "no control characters"),
    ({**GOOD, "metrics": {"port": -1}}, "metrics.port", "must be between 0 and 65535"),
    ({**GOOD, "metrics": {"port": 70000}}, "metrics.port", "must be between 0 and 65535"),
    ({**GOOD, "metrics": {"host": ""}}, "metrics.host", "must be a host name or address"),
    ({**GOOD, "metrics": {"host": "a b"}}, "metrics.host", "without spaces"),
    ({**GOOD, "name": ""}, "name", "must be 1 to 64 printable characters"),
    ({**GOOD, "name": "line\x1b[2J"}, "name", "no control characters"),
    ({**GOOD, "status_interval_s": 0}, "status_interval_s", "must be >= 0.1"),
    ({**GOOD, "status_interval_s": NAN}, "status_interval_s", "must be a finite number >= 0.1"),
    ({**GOOD, "shutdown_timeout_s": 0}, "shutdown_timeout_s", "must be > 0"),
    ({**GOOD, "shutdown_timeout_s": -INF}, "shutdown_timeout_s", "must be a finite number > 0"),
]


def the_one_error(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(("data", "key", "rule"), BAD_VALUES, ids=[f"{k} {r}" for _, k, r in BAD_VALUES])
def test_each_bad_value_is_refused_naming_its_key(tmp_path: Path, data: dict, key: str, rule: str) -> None:
    message = the_one_error(tmp_path, data)
    assert message.startswith((f"{key} is ", f"{key} must be ")), message
    assert rule in message, message


def float_keys() -> list[str]:
    """Every float key of the schema, found by walking the dataclasses (a new one is covered too)."""
    keys: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            args = typing.get_args(tp)
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            elif typing.get_origin(tp) is list and dataclasses.is_dataclass(args[0]):
                walk(args[0], f"{prefix}{f.name}[0].")
            elif tp is float or float in args:
                keys.append(prefix + f.name)

    walk(LineConfig, "")
    return keys


def setting(key: str, value: Any) -> dict:
    """GOOD with ``key`` (a path like cameras[0].fps) set to ``value``."""
    data = {**GOOD, "cameras": [{"id": "a"}]}
    node: dict = data
    parts = key.replace("[0]", "").split(".")
    for part in parts[:-1]:
        node = node[part][0] if part == "cameras" else node.setdefault(part, {})
    node[parts[-1]] = value
    return data


@pytest.mark.parametrize("key", float_keys())
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_every_float_key_refuses_nan_and_infinity(tmp_path: Path, key: str, value: float) -> None:
    message = the_one_error(tmp_path, setting(key, value))
    assert message.startswith(f"{key} is {value!r}; must be a finite number"), message


def test_the_float_keys_are_found() -> None:
    """The walk above sees the schema (a walk that found nothing would pass every case)."""
    assert {"cameras[0].fps", "workers.heartbeat_timeout_s", "status_interval_s"} <= set(float_keys())
    assert len(float_keys()) >= 13


SECTIONS = (
    LineConfig,
    config_module.ModelConfig,
    config_module.CameraConfig,
    config_module.WorkersConfig,
    config_module.DecisionConfig,
    config_module.EndpointsConfig,
    config_module.SinksConfig,
    config_module.MqttSinkConfig,
    config_module.OpcuaSinkConfig,
    config_module.PublishConfig,
    config_module.MetricsConfig,
    config_module.SecurityConfig,
)


def all_keys() -> list[tuple[str, dataclasses.Field, Any]]:
    """(Section.key, field, type) of every key in every section."""
    out = []
    for cls in SECTIONS:
        hints = typing.get_type_hints(cls)
        out += [(f"{cls.__name__}.{f.name}", f, hints[f.name]) for f in dataclasses.fields(cls)]
    return out


@pytest.mark.parametrize(("name", "f", "tp"), all_keys(), ids=[n for n, _, _ in all_keys()])
def test_every_key_has_a_rule_that_its_default_passes(name: str, f: dataclasses.Field, tp: Any) -> None:
    """A new key needs a rule (a range, choices, a text rule) unless it is a section of keys."""
    args = typing.get_args(tp)
    is_section = dataclasses.is_dataclass(tp) or (args and dataclasses.is_dataclass(args[0]))
    if is_section:
        assert tp in SECTIONS or args[0] in SECTIONS, f"{name}: add its section to SECTIONS"
        return
    if f.metadata.get("internal"):
        return
    rule, allowed = f.metadata.get("rule"), f.metadata.get("choices")
    assert rule is not None or allowed, f"{name} ({tp}) has no rule"
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if allowed:
        assert default in allowed, name
    if rule is not None and default is not None:
        assert rule.check(default), f"{name}: its default {default!r} breaks its own rule"


def doc_keys() -> list[tuple[str, dataclasses.Field]]:
    """(key as docs/daemon.md writes it, e.g. cameras[].fps; field) of every key a file can set."""
    out = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp, args = hints[f.name], typing.get_args(hints[f.name])
            if f.metadata.get("internal"):
                continue
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            elif args and dataclasses.is_dataclass(args[0]):
                walk(args[0], f"{prefix}{f.name}[].")
            else:
                out.append((prefix + f.name, f))

    walk(LineConfig, "")
    return out


def test_the_daemon_doc_lists_every_key_with_its_rule() -> None:
    rows = {
        line.split("|")[1].strip(): line
        for line in (ROOT / "docs" / "daemon.md").read_text().splitlines()
        if line.startswith("| `")
    }
    assert len(doc_keys()) >= 39
    for key, f in doc_keys():
        row = rows.get(f"`{key}`")
        assert row is not None, f"docs/daemon.md has no row for {key}"
        rule = f.metadata.get("rule")
        if rule is not None and rule.bounds:
            assert rule.bounds in row, f"docs/daemon.md: {key} should say {rule.bounds!r}: {row}"
        for allowed in f.metadata.get("choices", ()):
            assert f"`{allowed}`" in row, f"docs/daemon.md: {key} should list {allowed!r}: {row}"


@pytest.mark.parametrize(
    "cam_id", ["cam1", "station-b-trigger", "line_2.left", "A" * 64, "0", "a..b"], ids=lambda s: s[:12]
)
def test_safe_camera_ids_load(cam_id: str) -> None:
    assert parse_config(cam(id=cam_id)).cameras[0].id == cam_id


def test_a_nan_fps_stops_lineside_run_with_one_line_and_starts_nothing(tmp_path: Path) -> None:
    """End to end: the file exactly as the review wrote it; exit 2, one line, no run folder,
    no sink folders (nothing started, nothing touched)."""
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "model: {package: pkg}\n"
        "cameras:\n  - {id: a, source: synthetic, fps: .nan}\n"
        f"sinks: {{decision_log: {tmp_path}/log/d.sqlite, ng_store: {tmp_path}/ng}}\n"
    )
    run_tmp = tmp_path / "tmp"
    run_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(run_tmp)}  # where a started line would make its run folder
    line = one_error_line(run_cli("run", "--config", str(path), "--duration", "1", env=env))
    rule = "must be a finite number >= 0 (0 = as fast as it can)"
    assert line == f"lineside: error: {path}: cameras[0].fps is nan; {rule}"
    assert list(run_tmp.iterdir()) == []
    assert not (tmp_path / "log").exists() and not (tmp_path / "ng").exists()

    override = one_error_line(run_cli("run", "--config", str(path), "--set", "workers.count=[", env=env))
    assert "--set 'workers.count=[': the value is not valid YAML" in override


TWO_CAMERAS = {"model": {"package": "pkg"}, "cameras": [{"id": "a"}, {"id": "b", "fps": 2}]}


def test_set_reaches_cameras_and_reads_yaml_values(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(TWO_CAMERAS))
    sets = [
        "cameras[0].fps=5",
        "cameras[-1].roi=[0, 0, 32, 32]",
        "cameras[1].options.defect_rate=0.25",
        "workers.count=2",
        "decision.threshold=null",
        "security.insecure=true",
    ]
    cfg = load_config(path, sets)
    assert cfg.cameras[0].fps == 5 and cfg.cameras[1].fps == 2
    assert cfg.cameras[1].roi == [0, 0, 32, 32] and cfg.cameras[1].options == {"defect_rate": 0.25}
    assert cfg.workers.count == 2 and cfg.decision.threshold is None and cfg.security.insecure is True
    # the file itself is untouched; a later --set wins over an earlier one
    assert load_config(path, ["workers.count=2", "workers.count=3"]).workers.count == 3
    assert load_config(path).cameras[0].fps == 5.0  # the default, as before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cameras[9].fps=5", "cameras[9] is past the end; cameras has 2 items (0..1)"),
        ("model..package=x", "an empty part (two dots, or a dot at an end)"),
        ("workers.count", "expected KEY=VALUE, e.g. workers.count=2"),
        ("workers[0].count=1", "workers is a mapping, not a list; drop the [0]"),
        ("cameras.fps=5", "cameras is a list; index it, e.g. cameras[0].fps"),
        ("cameras[0].fps[0]=5", "cameras[0].fps is empty, not a list"),
        ("workers.cout=2", "unknown key 'workers.cout'; did you mean 'count'?"),
        ("cameras[1].fsp=2", "unknown key 'cameras[1].fsp'; did you mean 'fps'?"),
        ("camras[0].fps=2", "unknown key 'camras'; did you mean 'cameras'?"),
        ("workers.count=[", "the value is not valid YAML"),
        ("run_dir=/tmp/x", "unknown key 'run_dir'"),
    ],
)
def test_bad_set_is_one_error_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(TWO_CAMERAS))
    with pytest.raises(ConfigError) as err:
        load_config(path, [text])
    assert f"--set {text!r}: " in str(err.value) and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_set_errors_through_the_run_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(TWO_CAMERAS))
    assert main(["run", "--config", str(path), "--set", "cameras[9].fps=5"]) == 2
    err = capsys.readouterr().err
    past = "cameras[9] is past the end; cameras has 2 items (0..1)"
    assert err == f"lineside: error: --set 'cameras[9].fps=5': {past}\n"
    assert main(["run", "--config", str(path), "--set", "cameras[0].polcy=lossless"]) == 2
    assert "did you mean 'policy'?" in capsys.readouterr().err
    # a good --set reaches the camera: the line then stops at the missing package, one line too
    assert main(["run", "--config", str(path), "--set", "cameras[0].fps=5"]) == 2
    assert "no such model package folder" in capsys.readouterr().err
