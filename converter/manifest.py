"""The model manifest: everything needed to use a model without the training code.

``manifest.json`` sits in every model package next to ``model.onnx``. It is
validated on read, so a hand-edited or truncated file is refused with one line
that names the key and the fix instead of failing later inside a worker.

Schema 2 adds ``files_sha256``: the sha256 of every graph the manifest names, so a graph
changed or swapped after export is refused before it is loaded (``ModelPackage.verify``).
Schema 1 manifests (exported before) are still read; their graphs cannot be checked, and
the line says so once at start.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from converter.errors import LinesideError
from converter.preprocessing import NORMALIZATIONS

SCHEMA_VERSION = 2
#: schema 1 is schema 2 without ``files_sha256``
READABLE_SCHEMAS = (1, 2)
MANIFEST_NAME = "manifest.json"

LAYOUTS = ("NHWC", "NCHW")
ACTIVATIONS = ("sigmoid", "none")


class ManifestError(LinesideError, ValueError):
    """A manifest is missing, unreadable or does not match the schema."""


@dataclass
class InputSpec:
    """The tensor the model takes: one image, batch dimension dynamic."""

    name: str
    height: int
    width: int
    channels: int = 1
    layout: str = "NHWC"
    dtype: str = "float32"


@dataclass
class OutputSpec:
    """The tensor the model returns: a per-pixel defect map."""

    name: str
    activation: str = "sigmoid"
    channels: int = 1


@dataclass
class ModelManifest:
    """What ``manifest.json`` holds; see docs/architecture.md and docs/converter.md (the model package)."""

    model_id: str
    architecture: str
    input: InputSpec
    output: OutputSpec
    normalization: str = "zero_one"
    #: per-pixel probability above which a pixel counts as defective
    threshold: float = 0.5
    #: connected regions smaller than this many pixels are ignored
    min_defect_area: int = 16
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source_checkpoint_sha256: str = ""
    tool_versions: dict[str, str] = field(default_factory=dict)
    #: precision -> file name inside the package ("fp32": "model.onnx", ...)
    files: dict[str, str] = field(default_factory=lambda: {"fp32": "model.onnx"})
    #: file name -> sha256 (hex) of that file as it was written; one entry per name in ``files``
    files_sha256: dict[str, str] = field(default_factory=dict)
    #: results of accuracy gates (fp16 / int8 / uint8 against fp32), written by the converter, and
    #: per backend and precision by `lineside gate` ("openvino:bf16", ...); absent keys: never run
    gates: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record_file(self, precision: str, name: str, sha256: str) -> None:
        """Name the graph of ``precision`` and the sha256 it was written with."""
        self.files[precision] = name
        self.files_sha256[name] = sha256

    def save(self, package_dir: str | Path) -> Path:
        path = Path(package_dir) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a manifest
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "manifest") -> ModelManifest:
        return _parse(data, source)

    @classmethod
    def load(cls, package_dir: str | Path) -> ModelManifest:
        path = Path(package_dir) / MANIFEST_NAME
        if not path.is_file():
            msg = f"{path}: no manifest; is {package_dir} a model package? Create one with `lineside export`."
            raise ManifestError(msg)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            msg = f"{path}: not valid JSON ({exc}); re-create it with `lineside export`."
            raise ManifestError(msg) from None
        return _parse(data, str(path))


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str) -> Any:
    if key not in data:
        msg = f"{source}: missing key {key!r}"
        raise ManifestError(msg)
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        msg = f"{source}: key {key!r} must be {names}, got {value!r}"
        raise ManifestError(msg)
    return value


def _choice(value: str, allowed: tuple[str, ...] | list[str], key: str, source: str) -> str:
    if value not in allowed:
        msg = f"{source}: key {key!r} is {value!r}; allowed: {', '.join(allowed)}"
        raise ManifestError(msg)
    return value


def _parse(data: Any, source: str) -> ModelManifest:
    if not isinstance(data, dict):
        msg = f"{source}: expected a JSON object, got {type(data).__name__}"
        raise ManifestError(msg)
    version = _require(data, "schema_version", int, source)
    if version not in READABLE_SCHEMAS:
        msg = (
            f"{source}: schema_version {version} is not supported by this lineside "
            f"(it reads {', '.join(map(str, READABLE_SCHEMAS))}); re-export the package with this version"
        )
        raise ManifestError(msg)
    known = set(ModelManifest.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        msg = f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        raise ManifestError(msg)

    raw_in = _require(data, "input", dict, source)
    raw_out = _require(data, "output", dict, source)
    in_src, out_src = f"{source} [input]", f"{source} [output]"
    inp = InputSpec(
        name=_require(raw_in, "name", str, in_src),
        height=_require(raw_in, "height", int, in_src),
        width=_require(raw_in, "width", int, in_src),
        channels=_require(raw_in, "channels", int, in_src),
        layout=_choice(_require(raw_in, "layout", str, in_src), LAYOUTS, "layout", in_src),
        dtype=_choice(_require(raw_in, "dtype", str, in_src), ("float32", "uint8"), "dtype", in_src),
    )
    for key in ("height", "width", "channels"):
        if getattr(inp, key) <= 0:
            msg = f"{in_src}: key {key!r} must be positive, got {getattr(inp, key)}"
            raise ManifestError(msg)
    out = OutputSpec(
        name=_require(raw_out, "name", str, out_src),
        activation=_choice(_require(raw_out, "activation", str, out_src), ACTIVATIONS, "activation", out_src),
        channels=_require(raw_out, "channels", int, out_src),
    )
    threshold = float(_require(data, "threshold", (int, float), source))
    if not 0.0 < threshold < 1.0:
        msg = f"{source}: key 'threshold' must be in (0, 1), got {threshold}"
        raise ManifestError(msg)
    files = _require(data, "files", dict, source)
    if "fp32" not in files:
        msg = f'{source}: key \'files\' must name the fp32 graph, e.g. {{"fp32": "model.onnx"}}'
        raise ManifestError(msg)
    return ModelManifest(
        model_id=_require(data, "model_id", str, source),
        architecture=_require(data, "architecture", str, source),
        input=inp,
        output=out,
        normalization=_choice(
            _require(data, "normalization", str, source), sorted(NORMALIZATIONS), "normalization", source
        ),
        threshold=threshold,
        min_defect_area=_require(data, "min_defect_area", int, source),
        dataset=data.get("dataset", {}),
        metrics=data.get("metrics", {}),
        source_checkpoint_sha256=data.get("source_checkpoint_sha256", ""),
        tool_versions=data.get("tool_versions", {}),
        files=files,
        files_sha256=_hashes(data, files, version, source),
        gates=data.get("gates", {}),
        created_at=data.get("created_at", ""),
        schema_version=version,
    )


def _hashes(data: dict[str, Any], files: dict[str, Any], version: int, source: str) -> dict[str, str]:
    """``files_sha256``: required from schema 2 on, one 64-hex-digit entry per named file."""
    # a schema 1 manifest saved again (a gate recorded in it) writes its empty files_sha256 back
    if version < 2 and not data.get("files_sha256"):
        return {}
    hashes = _require(data, "files_sha256", dict, source)
    for name in files.values():
        value = hashes.get(name)
        if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            msg = (
                f"{source}: key 'files_sha256' has no valid sha256 for {name!r} (got {value!r}); "
                "re-run `lineside export`"
            )
            raise ManifestError(msg)
    return hashes
