"""The line config: typed schemas with defaults, a YAML file merged over them.

A bad file, key or value raises one ConfigError that names the file, the key
path and the allowed values (Savant style), so the daemon never starts on a
config it does not understand. Validation uses explicit checks, not ``assert``.

Every field carries its rule in its metadata (``number``, ``text``, ``choices``, a ``Rule``);
the builder checks each key it reads for its type, its rule and, for a float, that it is
finite. ``_check_values`` checks what spans keys (unique ids, endpoints, camera options).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.overrides import apply_overrides
from converter.schema import (
    YES_NO,
    ConfigError,
    Rule,
    build,
    choices,
    internal,
    not_finite,
    number,
    number_rule,
    override_schema,
    read_yaml_mapping,
    show,
    text,
    text_rule,
    yes_no,
)
from converter.schema import _num as _num

__all__ = ["YES_NO", "ConfigError", "Rule", "number_rule", "text_rule"]

#: max_age_ms when a camera does not set it: a live view wants fresh frames; lossless means
#: every frame is decided, however long it waited
DEFAULT_MAX_AGE_MS = {"latest": 2000.0, "lossless": 0.0}

#: the longest camera id (part of file names, topics and metric labels) or line name
MAX_NAME_LEN = 64

#: a camera id (also checked on every message: edge/protocol.py)
CAMERA_ID_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"


def _is_name(v: str) -> bool:
    return bool(re.fullmatch(CAMERA_ID_PATTERN, v)) and len(v) <= MAX_NAME_LEN


#: camera ids end up in NG file paths, ZeroMQ topics (result.<id>) and metric labels: ASCII letters,
#: digits, _ - . only (no path separators, no "..", no spaces), and no leading dot (hidden files)
SAFE_NAME = Rule(
    lambda v: v == "" or _is_name(v),
    f"must be 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ - . not starting with '.' (empty = cam<N>)",
)
#: text shown on the console and in the summary: no control characters (a newline or an escape
#: sequence in it could forge or garble log lines)
LINE_NAME = Rule(
    lambda v: 0 < len(v) <= MAX_NAME_LEN and v.isprintable(),
    f"must be 1 to {MAX_NAME_LEN} printable characters (no control characters)",
)


def _is_roi(v: list[int]) -> bool:
    return not v or (len(v) == 4 and min(v[:2]) >= 0 and min(v[2:]) > 0)


def _is_endpoint(v: str) -> bool:
    scheme, sep, address = v.partition("://")
    return bool(sep) and scheme in ("ipc", "tcp", "inproc") and address != "" and v.isprintable()


@dataclass
class ModelConfig:
    """Which model the workers run and on which backend."""

    #: model package folder (made by `lineside export`); relative to the config file
    package: str = text("models/demo")
    #: auto: tensorrt when the package has an engine for this GPU, else openvino when installed and
    #: gated (`lineside gate`), else onnxruntime
    backend: str = choices("auto", "onnxruntime", "tensorrt", "openvino", default="auto")
    #: openvino device: CPU, or GPU / NPU for an Intel iGPU / NPU
    device: str = text("CPU")
    #: ONNX graph precision for the onnxruntime backend; auto: the INT8 graph where `lineside gate
    #: PACKAGE --backend onnxruntime` passed it and timed it faster than FP32 on this CPU model, else fp32
    precision: str = choices("auto", "fp32", "fp16", "int8", default="auto")
    #: onnxruntime intra-op threads per worker; 0 = all cores
    threads: int = number(0, ge=0, le=1024, note="0 = all cores")


@dataclass
class CameraConfig:
    """One camera process."""

    #: the camera's name in results, topics, metric labels and NG file names; empty = cam<N>
    id: str = field(default="", metadata={"rule": SAFE_NAME})
    #: where frames come from: generated images, an image folder, or OpenCV (device, RTSP, video file)
    source: str = choices("synthetic", "folder", "opencv", default="synthetic")
    #: source-specific options (synthetic: defect_rate, class_id, size, seed;
    #: folder: path, loop; opencv: uri, backend). The ones in OPTION_RULES are checked here,
    #: the names against the source's signature when the line starts
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"rule": Rule(lambda v: all(isinstance(k, str) for k in v), "must have text keys")},
    )
    #: frames per second the camera may deliver at most; 0 = as fast as it can
    fps: float = number(5.0, ge=0, note="0 = as fast as it can")
    #: latest (live video: keep the freshest frame) or lossless (every frame decided)
    policy: str = choices("latest", "lossless", default="latest")
    #: frames older than this when a worker gets them are dropped as too_old; 0 = never.
    #: Unset: 2000 for a latest camera, 0 (never) for a lossless one, whose every frame is decided
    max_age_ms: float | None = number(None, ge=0, note="0 = never too old")
    #: frames a lossless camera buffers while the line is busy before it must drop; each holds a
    #: whole frame in memory, hence the bound
    buffer: int = number(64, ge=1, le=65536)
    #: region of interest [x, y, w, h] cut before anything else; empty = whole frame
    roi: list[int] = field(
        default_factory=list,
        metadata={
            "rule": Rule(_is_roi, "must be [x, y, w, h] with x, y >= 0 and w, h > 0 (empty = whole frame)")
        },
    )
    #: resize the frame to the model input, or cut it into model-sized tiles
    fit: str = choices("resize", "tile", default="resize")
    #: how long opening the source may take before the camera retries
    open_timeout_s: float = number(5.0, gt=0)
    #: how long one frame read may take before the camera reconnects
    read_timeout_s: float = number(2.0, gt=0)
    #: no frame for this long marks the camera silent (readiness goes false)
    silent_after_s: float = number(5.0, gt=0)
    #: the first wait before reconnecting a lost source; it doubles (with jitter) up to reconnect_max_s
    reconnect_initial_s: float = number(0.5, gt=0)
    #: the longest wait between reconnect attempts; at least reconnect_initial_s
    reconnect_max_s: float = number(30.0, gt=0)
    #: greyscale image (0 = off, 255 = checked) the size of the model input; pixels at 0 are ignored
    ignore_mask: str = text("", empty="none")


@dataclass
class WorkersConfig:
    """The inference worker processes on this box."""

    #: local worker processes (each loads the model)
    count: int = number(1, ge=0, le=256, note="0 = only remote workers")
    #: a batch goes out when it holds max_batch frames ...
    max_batch: int = number(4, ge=1, le=256)
    #: ... or when its first frame has waited this long
    max_wait_ms: float = number(20.0, ge=0)
    #: a worker silent for this long is declared dead and its frames counted lost (a local worker
    #: that died: as soon as its restarted successor joins); at least 1.5 s, since workers
    #: heartbeat once a second (a shorter one loses live workers)
    heartbeat_timeout_s: float = number(10.0, ge=1.5)


#: a score the defect map is cut at (threshold, mask_threshold)
_SCORE = Rule(lambda v: 0 < v < 1, "must be between 0 and 1", "between 0 and 1")


@dataclass
class DecisionConfig:
    """How a defect map becomes PASS / FAIL (edge/postprocess.decide). Empty values take the
    manifest's defaults (edge/worker.decision_rules)."""

    #: a pixel is a defect above this score
    threshold: float | None = field(default=None, metadata={"rule": _SCORE})
    #: defect regions smaller than this (pixels) are ignored
    min_defect_area: int | None = number(None, ge=0)
    #: the defect mask is drawn at this score: the regions above it that touch a region the
    #: decision kept (the decision stays at threshold); empty: the manifest's, else threshold
    mask_threshold: float | None = field(default=None, metadata={"rule": _SCORE})
    #: FAIL when the total defect area (pixels) exceeds this
    max_defect_area: int = number(0, ge=0)
    #: FAIL when more than this many defects are found
    max_defect_count: int = number(0, ge=0)


_ENDPOINT = Rule(_is_endpoint, "must start with ipc://, tcp:// or inproc:// followed by an address")


def endpoint_field(default: str) -> Any:
    return field(default=default, metadata={"rule": _ENDPOINT})


@dataclass
class EndpointsConfig:
    """ZeroMQ endpoints. ipc:// within one box, tcp:// across boxes; each a different one.

    ``{run_dir}`` expands to a per-run temporary folder.
    """

    #: cameras -> router (router binds)
    frames: str = endpoint_field("ipc://{run_dir}/frames")
    #: router <-> workers (router binds; remote workers connect here)
    work: str = endpoint_field("ipc://{run_dir}/work")
    #: workers/router -> collector (collector binds; remote workers connect here)
    results: str = endpoint_field("ipc://{run_dir}/results")
    #: collector -> subscribers (PLC/MES bridge, UI)
    publish: str = endpoint_field("tcp://127.0.0.1:5570")


#: a host name or address (a bind address or a peer's)
HOST = Rule(
    lambda v: v != "" and v.isprintable() and not any(c.isspace() for c in v),
    "must be a host name or address, without spaces",
)
#: characters MQTT gives a meaning in a topic (level separator, wildcards)
MQTT_TOPIC_SPECIALS = "/+#"
#: what sinks.mqtt.topic_prefix allows: topic levels joined by '/', no wildcards
_TOPIC_PREFIX = Rule(
    lambda v: (
        v != "" and v.isprintable() and "+" not in v and "#" not in v and all(level for level in v.split("/"))
    ),
    "must be MQTT topic levels joined by / (no + or #, no empty level)",
)


def _is_opcua_endpoint(v: str) -> bool:
    scheme, sep, rest = v.partition("://")
    host, _, port = rest.split("/", 1)[0].rpartition(":")
    return (
        scheme == "opc.tcp" and bool(sep) and host != "" and port.isdigit() and 0 < int(port) < 65536
    ) and v.isprintable()


@dataclass
class MqttSinkConfig:
    """The MQTT sink: every decision and the line's status to a broker (docs/integration.md).

    It runs in a process of its own that subscribes to the line's publish socket, so a slow
    or absent broker never slows the line. Needs paho-mqtt (``pip install 'lineside[plant]'``).
    """

    #: publish to the broker below
    enabled: bool = yes_no(False)
    #: the broker's host name or address
    host: str = field(default="127.0.0.1", metadata={"rule": HOST})
    #: the broker's port (1883 plain, 8883 with TLS by convention)
    port: int = number(1883, ge=1, le=65535)
    #: first topic levels: results on <topic_prefix>/<name>/<camera>/result, the status on
    #: <topic_prefix>/<name>/status
    topic_prefix: str = field(default="lineside", metadata={"rule": _TOPIC_PREFIX})
    #: QoS of the result messages (the status always goes with QoS 1, retained)
    qos: int = number(1, ge=0, le=2)
    #: add the defect mask to each result as a base64 PNG (``mask_png``); off keeps messages small
    include_mask: bool = yes_no(False)
    #: the MQTT client id (unique per broker)
    client_id: str = text("", empty="lineside-<name>")
    #: seconds between keep-alive pings; the broker declares the sink gone (and publishes its
    #: last will) after 1.5 times this without a word
    keepalive_s: int = number(30, ge=5, le=65535)
    #: user name for the broker
    username: str = text("", empty="no user name")
    #: name of the environment variable that holds the password (the password itself never
    #: goes in the config file)
    password_env: str = text("", empty="none")
    #: file whose first line is the password (relative to the config file; keep it mode 0600)
    password_file: str = text("", empty="none")
    #: connect with TLS (also implied by ca_file, cert_file or key_file)
    tls: bool = yes_no(False)
    #: CA certificate(s) that sign the broker's certificate, PEM (relative to the config file)
    ca_file: str = text("", empty="the system's CAs")
    #: client certificate, PEM, for brokers that authenticate clients by certificate
    cert_file: str = text("", empty="none")
    #: the client certificate's private key, PEM
    key_file: str = text("", empty="none")
    #: messages kept while the broker is slow or down; when full, the oldest is dropped and counted
    queue: int = number(10000, ge=1, le=1_000_000)
    #: first wait before connecting again after the broker went away (doubles up to retry_max_s)
    retry_initial_s: float = number(0.5, gt=0)
    #: the longest wait between connection attempts; at least retry_initial_s
    retry_max_s: float = number(30.0, gt=0)


@dataclass
class OpcuaSinkConfig:
    """The OPC UA sink: a server with each camera's last decision, the counters and the line's
    ready state (docs/integration.md). A process of its own, like the MQTT sink. Needs
    asyncua (``pip install 'lineside[plant]'``)."""

    #: serve the line's state over OPC UA
    enabled: bool = yes_no(False)
    #: where the server listens, opc.tcp://HOST:PORT/PATH; a host beyond loopback needs
    #: security.insecure: true (the server offers no OPC UA security: anyone who reaches it
    #: can read and reset the counters)
    endpoint: str = field(
        default="opc.tcp://127.0.0.1:4840/lineside/",
        metadata={"rule": Rule(_is_opcua_endpoint, "must be opc.tcp://HOST:PORT/PATH")},
    )
    #: namespace URI of the line's nodes
    namespace: str = text("", empty="urn:lineside:<name>")
    #: updates kept while the server is busy or cannot listen; when full, the oldest is dropped
    #: and counted
    queue: int = number(10000, ge=1, le=1_000_000)
    #: first wait before listening again after the endpoint could not be bound (doubles up to retry_max_s)
    retry_initial_s: float = number(0.5, gt=0)
    #: the longest wait between attempts to listen; at least retry_initial_s
    retry_max_s: float = number(30.0, gt=0)


@dataclass
class SinksConfig:
    """Where decisions are kept."""

    #: SQLite decision log (WAL); empty = off
    decision_log: str = text("runs/decisions.sqlite", empty="off")
    #: folder for NG images and masks; empty = off
    ng_store: str = text("runs/ng", empty="off")
    #: the NG store deletes its oldest entries to stay under this. At least 1 MB: one entry (image,
    #: mask, metadata) is often hundreds of kB, and a smaller cap would rotate out every save
    ng_store_max_mb: float = number(512.0, ge=1)
    #: MQTT for the plant's systems (off unless enabled)
    mqtt: MqttSinkConfig = field(default_factory=MqttSinkConfig)
    #: an OPC UA server for PLCs (off unless enabled)
    opcua: OpcuaSinkConfig = field(default_factory=OpcuaSinkConfig)


@dataclass
class PublishConfig:
    """What the publish socket sends besides decisions (docs/protocol.md)."""

    #: a JPEG preview of the frame travels with a camera's result at most this often, so a
    #: page can show what the camera sees (the line keeps full frames of NG parts only):
    #: the longest side of the preview in pixels; 0 = no previews
    preview_px: int = number(256, ge=0, le=2048, note="0 = off")
    #: at most one preview per camera per this many seconds (per worker: each worker keeps
    #: its own clock, so N workers may send up to N per period)
    preview_every_s: float = number(0.5, ge=0.05)


@dataclass
class MetricsConfig:
    """Prometheus /metrics and health endpoints."""

    #: HTTP port for /metrics, /healthz (liveness) and /readyz (readiness); 0 = off
    port: int = number(9108, ge=0, le=65535, note="0 = off")
    #: the address the HTTP server binds (0.0.0.0 = every interface)
    host: str = field(default="127.0.0.1", metadata={"rule": HOST})


@dataclass
class SecurityConfig:
    """Who may connect to the line's tcp endpoints (docs/security.md)."""

    #: CURVE keys folder made by `lineside keys` (relative to the config file); set, every
    #: tcp endpoint of the line authenticates its clients; empty = no CURVE
    keys: str = text("", empty="no CURVE")
    #: the client pair (keys/clients/NAME) this box's processes connect with;
    #: empty = `line`, or the folder's only pair
    client: str = text("", empty="line")
    #: allow tcp endpoints on a non-loopback address without keys: anyone who reaches
    #: them can inject frames and results (logged as a warning at every start)
    insecure: bool = yes_no(False)
    #: allow /metrics, /healthz and /readyz on a non-loopback metrics.host: HTTP cannot
    #: use the CURVE keys, so they are open to whoever reaches them (read-only)
    public_metrics: bool = yes_no(False)


#: the least time each shutdown stage gets, whatever shutdown_timeout_s says: a process
#: needs about that long to finish its loop, flush and exit. The collector gets the most: it
#: closes the books (the last sweep, the decision log, the final status), and with 1 s a loaded
#: 2-core box (load 9) killed it on its way out (tests/edge/test_reliability.py)
STAGE_FLOOR_S = (1.5, 1.0, 1.0, 1.5)


def stage_marks(timeout_s: float) -> tuple[float, ...]:
    """Seconds after SIGTERM by which cameras, router, workers and collector must have stopped:
    25 %, 75 %, 85 % and 100 % of ``timeout_s``, each at least its floor after the one before."""
    marks, last = [], 0.0
    for share, floor in zip((0.25, 0.75, 0.85, 1.0), STAGE_FLOOR_S, strict=True):
        last = max(timeout_s * share, last + floor)
        marks.append(last)
    return tuple(marks)


@dataclass
class LineConfig:
    """A production line: its cameras, its model, its workers and sinks."""

    #: shown in the console status line and the run summary (not used in paths or labels)
    name: str = field(default="line", metadata={"rule": LINE_NAME})
    model: ModelConfig = field(default_factory=ModelConfig)
    cameras: list[CameraConfig] = field(default_factory=list)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    endpoints: EndpointsConfig = field(default_factory=EndpointsConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    #: seconds between status lines on the console (and status messages to subscribers). At least
    #: 0.1 s: each one builds the whole summary under the collector's lock and prints a line, so a
    #: smaller period floods the console and subscribers and takes the collector from its results
    status_interval_s: float = number(5.0, ge=0.1)
    #: SIGTERM/SIGINT: stop capture, then drain for at most this long
    shutdown_timeout_s: float = number(10.0, gt=0)
    #: folder of the config file; relative paths are resolved against it
    base_dir: str = internal("")
    #: per-run folder for ipc endpoints and the saved ledger (made by the supervisor)
    run_dir: str = internal("")
    #: per-run secret (hex) that tags frames and seals the line's own messages
    #: (edge/protocol.py); made by the supervisor, handed to the processes it starts, never saved
    line_key: str = internal("")

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

    @property
    def key(self) -> bytes:
        """The line key (see ``line_key``)."""
        if not self.line_key:
            msg = "this line has no key; only the supervisor of `lineside run` makes one"
            raise ConfigError(msg)
        return bytes.fromhex(self.line_key)


#: LineConfig fields set when a line runs, never by a config file
RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(LineConfig) if f.metadata.get("internal"))


def _option_rules(kind: str) -> dict[str, tuple[tuple[type, ...], Rule | None]]:
    """Options of a ``kind`` camera whose values are cheap to check here: name -> (types, rule).

    The option names themselves are checked against the source's signature when the line
    starts (Supervisor.preflight); anything deeper is the source's business.
    """
    count, real, words, flag = (int,), (int, float), (str,), (bool,)
    if kind == "synthetic":
        from converter.synthetic import N_CLASSES  # loads OpenCV: only for a synthetic camera

        return {
            # the renderer's smallest image is 32 px; a frame bank of 8192 px frames is already GBs
            "size": (count, number_rule(ge=32, le=8192)),
            "class_id": (count, number_rule(ge=1, le=N_CLASSES)),
            "defect_rate": (real, number_rule(ge=0, le=1)),
            "seed": (count, number_rule(ge=0)),
            "bank": (count, number_rule(ge=1, le=1024)),
            "stall_s": (real, number_rule(ge=0)),
        }
    if kind == "folder":
        return {
            "path": (words, text_rule()),
            "pattern": (words, text_rule()),
            "loop": (flag, None),
            "fps": (real, number_rule(ge=0, note="0 = as fast as it can")),
            "cache_mb": (real, number_rule(ge=0, note="0 = decode every pass")),
        }
    if kind == "opencv":
        uri = Rule(
            lambda v: v != "" and (not isinstance(v, str) or v.isprintable()),
            "must be a device index, a URL, a video file or a pipeline",
        )
        return {
            "uri": ((str, int), uri),
            "loop": (flag, None),
            "fps": (real, number_rule(ge=0, note="0 = as fast as it decodes")),
            "open_timeout_s": (real, number_rule(gt=0)),
            "read_timeout_s": (real, number_rule(gt=0)),
            "close_timeout_s": (real, number_rule(gt=0)),
        }
    return {}


def _reject_non_finite(value: Any, key: str, source: str) -> None:
    """NaN and infinity anywhere in a camera's options: no option means them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise not_finite(key, value, source)
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(v, f"{key}.{k}", source)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_non_finite(v, f"{key}[{i}]", source)


def _check_options(cam: CameraConfig, key: str, source: str) -> None:
    _reject_non_finite(cam.options, key, source)
    if cam.source == "folder" and "path" not in cam.options:
        msg = f"{source}: {key}.path is missing; a folder camera needs the image folder"
        raise ConfigError(msg)
    if cam.source == "opencv" and "uri" not in cam.options:
        msg = (
            f"{source}: {key}.uri is missing; give a device index, "
            f"an rtsp:// URL, a video file or a GStreamer pipeline"
        )
        raise ConfigError(msg)
    rules = _option_rules(cam.source)
    for name, value in cam.options.items():
        if name not in rules:
            continue
        types_, rule = rules[name]
        if (isinstance(value, bool) and bool not in types_) or not isinstance(value, types_):
            kinds = " or ".join(t.__name__ for t in types_)
            msg = f"{source}: {key}.{name} must be {kinds}, got {show(value)}"
            raise ConfigError(msg)
        if rule is not None and not rule.check(value):
            msg = f"{source}: {key}.{name} is {show(value)}; {rule.text}"
            raise ConfigError(msg)


def _check_values(cfg: LineConfig, source: str) -> None:
    """What no single key's rule can say: the camera list, unique ids and endpoints, options that
    depend on the source, and defaults that depend on other keys."""

    def bad(key: str, value: Any, rule: str) -> ConfigError:
        return ConfigError(f"{source}: {key} is {show(value)}; {rule}")

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
        if cam.max_age_ms is None:
            cam.max_age_ms = DEFAULT_MAX_AGE_MS[cam.policy]
        if cam.reconnect_max_s < cam.reconnect_initial_s:
            rule = f"must be >= reconnect_initial_s ({_num(cam.reconnect_initial_s)})"
            raise bad(f"cameras[{i}].reconnect_max_s", cam.reconnect_max_s, rule)
        _check_options(cam, f"cameras[{i}].options", source)
    names = ("frames", "work", "results", "publish")
    for j, name in enumerate(names):
        ep = getattr(cfg.endpoints, name)
        for other in names[:j]:
            if ep == getattr(cfg.endpoints, other):
                raise bad(f"endpoints.{name}", ep, f"must differ from endpoints.{other}; each is bound once")
    _check_plant_sinks(cfg, bad)


def _check_plant_sinks(cfg: LineConfig, bad: Callable[[str, Any, str], ConfigError]) -> None:
    """The MQTT and OPC UA sinks' keys that depend on each other or on the line's name."""
    mqtt = cfg.sinks.mqtt
    for key, sink in (("sinks.mqtt", mqtt), ("sinks.opcua", cfg.sinks.opcua)):
        if sink.retry_max_s < sink.retry_initial_s:
            rule = f"must be >= retry_initial_s ({_num(sink.retry_initial_s)})"
            raise bad(f"{key}.retry_max_s", sink.retry_max_s, rule)
    if not mqtt.enabled:
        return
    if any(c in cfg.name for c in MQTT_TOPIC_SPECIALS):
        raise bad("name", cfg.name, "with sinks.mqtt enabled it is an MQTT topic level: no / + or #")
    if mqtt.password_env and mqtt.password_file:
        raise bad(
            "sinks.mqtt.password_file", mqtt.password_file, "set password_env or password_file, not both"
        )
    if (mqtt.password_env or mqtt.password_file) and not mqtt.username:
        raise bad("sinks.mqtt.username", "", "a password needs a user name")
    if bool(mqtt.cert_file) != bool(mqtt.key_file):
        raise bad("sinks.mqtt.key_file", mqtt.key_file, "cert_file and key_file go together")


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


def opcua_host_port(endpoint: str) -> tuple[str, int]:
    """(host, port) of an opc.tcp:// endpoint (already checked by its rule)."""
    host, _, port = endpoint.partition("://")[2].split("/", 1)[0].rpartition(":")
    return host.strip("[]"), int(port)


def open_opcua(cfg: LineConfig) -> str:
    """``sinks.opcua.endpoint (...)`` when the OPC UA server listens beyond loopback, else empty
    (it has no OPC UA security, and the CURVE keys do not cover it)."""
    sink = cfg.sinks.opcua
    if sink.enabled and not is_loopback(opcua_host_port(sink.endpoint)[0]):
        return f"sinks.opcua.endpoint ({sink.endpoint})"
    return ""


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
    if open_opcua(cfg) and not sec.insecure:
        msg = (
            f"{source}: {open_opcua(cfg)} would let anyone on the network read the line and reset its "
            f"counters (no OPC UA security); bind 127.0.0.1, or set security.insecure: true to accept that"
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
    cfg = build(LineConfig, data, source)
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


def load_config(path: str | Path, sets: list[str] | None = None) -> LineConfig:
    """Read a YAML line config, with ``--set KEY=VALUE`` flags applied; every problem is one
    ConfigError line."""
    path = Path(path)
    data = read_yaml_mapping(path, what="config", example="configs/demo.yaml")
    if sets:
        data = apply_overrides(data, sets, override_schema(LineConfig), error=ConfigError)
    return parse_config(data, str(path), path.resolve().parent)


def to_dict(cfg: LineConfig) -> dict[str, Any]:
    """Plain dict of the config, for passing to spawned processes."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> LineConfig:
    """Inverse of to_dict, for spawned processes (already validated)."""
    clean = {k: v for k, v in data.items() if k not in RUNTIME_FIELDS}
    cfg = build(LineConfig, clean, "<spawned>")
    for name in RUNTIME_FIELDS:
        setattr(cfg, name, data.get(name, ""))
    return cfg
