"""The line config: typed schemas with defaults, a YAML file merged over them.

A bad file, key or value raises one ConfigError that names the file, the key
path and the allowed values (Savant style), so the daemon never starts on a
config it does not understand. Validation uses explicit checks, not ``assert``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from converter.errors import LinesideError


class ConfigError(LinesideError):
    """The line config is missing, unreadable or invalid."""


#: max_age_ms when a camera does not set it: a live view wants fresh frames; lossless means
#: every frame is decided, however long it waited
DEFAULT_MAX_AGE_MS = {"latest": 2000.0, "lossless": 0.0}


def choices(*allowed: str, default: str) -> Any:
    return field(default=default, metadata={"choices": allowed})


@dataclass
class ModelConfig:
    """Which model the workers run and on which backend."""

    #: model package folder (made by `lineside export`); relative to the config file
    package: str = "models/demo"
    #: tensorrt when the package has an engine for this GPU, else onnxruntime
    backend: str = choices("auto", "onnxruntime", "tensorrt", default="auto")
    #: ONNX graph precision for the onnxruntime backend
    precision: str = choices("fp32", "fp16", "int8", default="fp32")
    #: onnxruntime intra-op threads per worker; 0 = all cores
    threads: int = 0


@dataclass
class CameraConfig:
    """One camera process."""

    id: str = ""
    #: synthetic | folder | opencv
    source: str = choices("synthetic", "folder", "opencv", default="synthetic")
    #: source-specific options (synthetic: defect_rate, class_id, size, seed;
    #: folder: path, loop; opencv: uri, backend)
    options: dict[str, Any] = field(default_factory=dict)
    #: frames per second the camera may deliver at most; 0 = as fast as it can
    fps: float = 5.0
    #: latest (live video: keep the freshest frame) or lossless (every frame decided)
    policy: str = choices("latest", "lossless", default="latest")
    #: frames older than this when a worker gets them are dropped as too_old; 0 = never.
    #: Unset: 2000 for a latest camera, 0 (never) for a lossless one, whose every frame is decided
    max_age_ms: float | None = None
    #: frames a lossless camera buffers while the line is busy before it must drop
    buffer: int = 64
    #: region of interest [x, y, w, h] cut before anything else; empty = whole frame
    roi: list[int] = field(default_factory=list)
    #: resize the frame to the model input, or cut it into model-sized tiles
    fit: str = choices("resize", "tile", default="resize")
    open_timeout_s: float = 5.0
    read_timeout_s: float = 2.0
    #: no frame for this long marks the camera silent (readiness goes false)
    silent_after_s: float = 5.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    #: greyscale image (0 = off, 255 = checked) the size of the model input; pixels at 0 are ignored
    ignore_mask: str = ""


@dataclass
class WorkersConfig:
    """The inference worker processes on this box."""

    count: int = 1
    #: a batch goes out when it holds max_batch frames ...
    max_batch: int = 4
    #: ... or when its first frame has waited this long
    max_wait_ms: float = 20.0
    #: a worker silent for this long is declared dead and its frames counted lost
    heartbeat_timeout_s: float = 10.0


@dataclass
class DecisionConfig:
    """How a defect map becomes PASS / FAIL. Empty values take the manifest's defaults."""

    threshold: float | None = None
    min_defect_area: int | None = None
    #: FAIL when the total defect area (pixels) exceeds this
    max_defect_area: int = 0
    #: FAIL when more than this many defects are found
    max_defect_count: int = 0


@dataclass
class EndpointsConfig:
    """ZeroMQ endpoints. ipc:// within one box, tcp:// across boxes.

    ``{run_dir}`` expands to a per-run temporary folder.
    """

    #: cameras -> router (router binds)
    frames: str = "ipc://{run_dir}/frames"
    #: router <-> workers (router binds; remote workers connect here)
    work: str = "ipc://{run_dir}/work"
    #: workers/router -> collector (collector binds; remote workers connect here)
    results: str = "ipc://{run_dir}/results"
    #: collector -> subscribers (PLC/MES bridge, UI)
    publish: str = "tcp://127.0.0.1:5570"


@dataclass
class SinksConfig:
    """Where decisions are kept."""

    #: SQLite decision log (WAL); empty = off
    decision_log: str = "runs/decisions.sqlite"
    #: folder for NG images and masks; empty = off
    ng_store: str = "runs/ng"
    ng_store_max_mb: float = 512.0


@dataclass
class MetricsConfig:
    """Prometheus /metrics and health endpoints."""

    #: HTTP port for /metrics, /healthz (liveness) and /readyz (readiness); 0 = off
    port: int = 9108
    host: str = "127.0.0.1"


@dataclass
class SecurityConfig:
    """Who may connect to the line's tcp endpoints (docs/security.md)."""

    #: CURVE keys folder made by `lineside keys` (relative to the config file); set, every
    #: tcp endpoint of the line authenticates its clients; empty = no CURVE
    keys: str = ""
    #: the client pair (keys/clients/NAME) this box's processes connect with;
    #: empty = `line`, or the folder's only pair
    client: str = ""
    #: allow tcp endpoints on a non-loopback address without keys: anyone who reaches
    #: them can inject frames and results (logged as a warning at every start)
    insecure: bool = False
    #: allow /metrics, /healthz and /readyz on a non-loopback metrics.host: HTTP cannot
    #: use the CURVE keys, so they are open to whoever reaches them (read-only)
    public_metrics: bool = False


@dataclass
class LineConfig:
    """A production line: its cameras, its model, its workers and sinks."""

    name: str = "line"
    model: ModelConfig = field(default_factory=ModelConfig)
    cameras: list[CameraConfig] = field(default_factory=list)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    endpoints: EndpointsConfig = field(default_factory=EndpointsConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    #: seconds between status lines on the console
    status_interval_s: float = 5.0
    #: SIGTERM/SIGINT: stop capture, then drain for at most this long
    shutdown_timeout_s: float = 10.0
    #: folder of the config file; relative paths are resolved against it
    base_dir: str = ""
    #: per-run folder for ipc endpoints and the saved ledger (made by the supervisor)
    run_dir: str = ""

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else Path(self.base_dir or ".") / p

    def endpoint(self, name: str) -> str:
        endpoint = getattr(self.endpoints, name)
        if "{run_dir}" in endpoint and not self.run_dir:
            msg = f"endpoints.{name} ({endpoint}) needs the line's run folder; only `lineside run` has one"
            raise ConfigError(msg)
        return endpoint.replace("{run_dir}", self.run_dir)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, source)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, source)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            msg = f"{source}: {key} must be a list, got {value!r}"
            raise ConfigError(msg)
        return [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            msg = f"{source}: {key} must be a mapping, got {value!r}"
            raise ConfigError(msg)
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (
        not isinstance(value, tp) or (tp is not bool and isinstance(value, bool))
    ):
        msg = f"{source}: {key} must be {_type_name(tp)}, got {value!r}"
        raise ConfigError(msg)
    return value


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        msg = f"{source}: {prefix or 'the top level'} must be a mapping, got {data!r}"
        raise ConfigError(msg)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields or key in ("base_dir", "run_dir"):
            allowed = ", ".join(k for k in fields if k not in ("base_dir", "run_dir"))
            msg = f"{source}: unknown key {path!r}; allowed here: {allowed}"
            raise ConfigError(msg)
        value = _convert(value, hints[key], path, source)
        allowed_values = fields[key].metadata.get("choices")
        if allowed_values and value not in allowed_values:
            msg = f"{source}: {path} is {value!r}; allowed: {', '.join(allowed_values)}"
            raise ConfigError(msg)
        kwargs[key] = value
    return cls(**kwargs)


def _check_values(cfg: LineConfig, source: str) -> None:
    def bad(key: str, value: Any, rule: str) -> ConfigError:
        return ConfigError(f"{source}: {key} is {value!r}; {rule}")

    if not cfg.cameras:
        msg = f"{source}: cameras is empty; add at least one camera (see configs/demo.yaml)"
        raise ConfigError(msg)
    seen: set[str] = set()
    for i, cam in enumerate(cfg.cameras):
        if not cam.id:
            cam.id = f"cam{i + 1}"
        if cam.id in seen:
            raise bad(f"cameras[{i}].id", cam.id, "camera ids must be unique")
        seen.add(cam.id)
        if cam.fps < 0:
            raise bad(f"cameras[{i}].fps", cam.fps, "must be >= 0")
        if cam.roi and (len(cam.roi) != 4 or min(cam.roi[2:]) <= 0 or min(cam.roi[:2]) < 0):
            raise bad(f"cameras[{i}].roi", cam.roi, "must be [x, y, w, h] with w, h > 0")
        if cam.buffer < 1:
            raise bad(f"cameras[{i}].buffer", cam.buffer, "must be >= 1")
        if cam.max_age_ms is None:
            cam.max_age_ms = DEFAULT_MAX_AGE_MS[cam.policy]
        elif cam.max_age_ms < 0:
            raise bad(f"cameras[{i}].max_age_ms", cam.max_age_ms, "must be >= 0 (0 = never too old)")
        if cam.source == "folder" and "path" not in cam.options:
            msg = f"{source}: cameras[{i}].options.path is missing; a folder camera needs the image folder"
            raise ConfigError(msg)
        if cam.source == "opencv" and "uri" not in cam.options:
            msg = (
                f"{source}: cameras[{i}].options.uri is missing; give a device index, "
                f"an rtsp:// URL, a video file or a GStreamer pipeline"
            )
            raise ConfigError(msg)
    w = cfg.workers
    if w.count < 0:
        raise bad("workers.count", w.count, "must be >= 0 (0 = only remote workers)")
    if not 1 <= w.max_batch <= 256:
        raise bad("workers.max_batch", w.max_batch, "must be between 1 and 256")
    if w.max_wait_ms < 0:
        raise bad("workers.max_wait_ms", w.max_wait_ms, "must be >= 0")
    d = cfg.decision
    if d.threshold is not None and not 0 < d.threshold < 1:
        raise bad("decision.threshold", d.threshold, "must be between 0 and 1")
    if cfg.shutdown_timeout_s <= 0:
        raise bad("shutdown_timeout_s", cfg.shutdown_timeout_s, "must be > 0")
    if not 0 <= cfg.metrics.port <= 65535:
        raise bad("metrics.port", cfg.metrics.port, "must be a TCP port or 0 (off)")
    for name in ("frames", "work", "results", "publish"):
        ep = getattr(cfg.endpoints, name)
        if not ep.startswith(("ipc://", "tcp://", "inproc://")):
            raise bad(f"endpoints.{name}", ep, "must start with ipc://, tcp:// or inproc://")


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this box only (``*``, ``0.0.0.0``, a LAN
    address, an interface name or a host name other than localhost are not)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_endpoints(cfg: LineConfig) -> list[str]:
    """The tcp endpoints the line binds beyond loopback without CURVE, as ``name (endpoint)``."""
    if cfg.security.keys:
        return []
    out = []
    for name in ("frames", "work", "results", "publish"):
        ep = getattr(cfg.endpoints, name)
        if ep.startswith("tcp://") and not is_loopback(ep[len("tcp://") :].rpartition(":")[0]):
            out.append(f"endpoints.{name} ({ep})")
    return out


def open_metrics(cfg: LineConfig) -> str:
    """``metrics.host (...)`` when the HTTP server listens beyond loopback, else empty."""
    if cfg.metrics.port and not is_loopback(cfg.metrics.host):
        return f"metrics ({cfg.metrics.host or '*'}:{cfg.metrics.port})"
    return ""


def _check_security(cfg: LineConfig, source: str) -> None:
    """A line never listens to the network unauthenticated unless its config says so."""
    sec = cfg.security
    if sec.client and not sec.keys:
        msg = f"{source}: security.client is {sec.client!r} but security.keys is empty; set both or neither"
        raise ConfigError(msg)
    exposed = open_endpoints(cfg)
    if exposed and not sec.insecure:
        msg = (
            f"{source}: {', '.join(exposed)} would accept anyone on the network (frames, results, "
            f"workers); set security.keys to a folder made by `lineside keys DIR` (docs/security.md), "
            f"bind 127.0.0.1, or set security.insecure: true to accept that"
        )
        raise ConfigError(msg)
    if open_metrics(cfg) and not (sec.public_metrics or sec.insecure):
        msg = (
            f"{source}: metrics.host is {cfg.metrics.host!r}: /metrics, /healthz and /readyz would be "
            f"open to the network, and HTTP cannot use the CURVE keys; keep 127.0.0.1 (scrape through "
            f"an SSH tunnel or a proxy), or set security.public_metrics: true (they are read-only)"
        )
        raise ConfigError(msg)


def parse_config(data: Any, source: str = "<config>", base_dir: str | Path = ".") -> LineConfig:
    """Build and validate a LineConfig from already-parsed YAML data."""
    cfg = _build(LineConfig, data, "", source)
    cfg.base_dir = os.fspath(base_dir)
    _check_values(cfg, source)
    _check_security(cfg, source)
    return cfg


def make_run_dir(cfg: LineConfig) -> str:
    """Create the line's private run folder (ipc sockets, the saved ledger), mode 0700.

    Made by the supervisor when a line starts and removed when it stops; ipc socket paths
    must stay under ~100 characters, so it lives in the short system temp folder.
    """
    cfg.run_dir = tempfile.mkdtemp(prefix="lineside-")
    return cfg.run_dir


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LineConfig:
    """Read a YAML line config; every problem is one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: config file not found; see configs/demo.yaml for an example"
        raise ConfigError(msg)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        msg = f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"
        raise ConfigError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{path}: cannot read the config ({exc})"
        raise ConfigError(msg) from None
    if overrides:
        data = _merge(data, overrides)
    return parse_config(data, str(path), path.resolve().parent)


def _merge(base: Any, over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(cfg: LineConfig) -> dict[str, Any]:
    """Plain dict of the config, for passing to spawned processes."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> LineConfig:
    """Inverse of to_dict, for spawned processes (already validated)."""
    base_dir, run_dir = data.get("base_dir", ""), data.get("run_dir", "")
    clean = {k: v for k, v in data.items() if k not in ("base_dir", "run_dir")}
    cfg = _build(LineConfig, clean, "", "<spawned>")
    cfg.base_dir, cfg.run_dir = base_dir, run_dir
    return cfg
