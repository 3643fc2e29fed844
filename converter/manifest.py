"""The model manifest: everything needed to use a model without the training code.

``manifest.json`` sits in every model package next to ``model.onnx``. It is
validated on read, so a hand-edited or truncated file is refused with one line
that names the key and the fix instead of failing later inside a worker.

Schema 2 adds ``files_sha256``: the sha256 of every graph the manifest names, so a graph
changed or swapped after export is refused before it is loaded (``ModelPackage.verify``).
Schema 1 manifests (exported before) are still read; their graphs cannot be checked, and
the line says so once at start.

Schema 3 adds ``mask_threshold``: the score the line draws its defect mask at, when calibration
chose one apart from the decision's ``threshold``. Schema 1 and 2 manifests draw at ``threshold``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from converter.errors import LinesideError
from converter.preprocessing import NORMALIZATIONS
from converter.schema import Rule, build, choices, number, read_json_object, text

SCHEMA_VERSION = 3
#: schema 1 is schema 2 without ``files_sha256``, schema 2 is schema 3 without ``mask_threshold``
READABLE_SCHEMAS = (1, 2, 3)
MANIFEST_NAME = "manifest.json"

LAYOUTS = ("NHWC", "NCHW")
ACTIVATIONS = ("sigmoid", "none")


class ManifestError(LinesideError, ValueError):
    """A manifest is missing, unreadable or does not match the schema."""


#: re-export a package with this version: the fix every manifest error names
REEXPORT = "re-create it with `lineside export`"
_SHA256 = Rule(
    lambda v: len(v) == 64 and all(c in "0123456789abcdef" for c in v), "must be a sha256 (64 hex digits)"
)


@dataclass
class InputSpec:
    """The tensor the model takes: one image, batch dimension dynamic."""

    name: str = text()
    height: int = number(gt=0)
    width: int = number(gt=0)
    channels: int = number(1, gt=0, required=True)
    layout: str = choices(*LAYOUTS, default="NHWC", required=True)
    dtype: str = choices("float32", "uint8", default="float32", required=True)


@dataclass
class OutputSpec:
    """The tensor the model returns: a per-pixel defect map."""

    name: str = text()
    activation: str = choices(*ACTIVATIONS, default="sigmoid", required=True)
    channels: int = number(1, gt=0, required=True)


@dataclass
class ModelManifest:
    """What ``manifest.json`` holds; see docs/architecture.md and docs/converter.md (the model package).

    A manifest is written whole, so a key the program has a default for is still required in
    the file (``required``): one without its threshold was cut short or hand-edited.
    """

    model_id: str = text()
    architecture: str = text()
    input: InputSpec = field(default_factory=lambda: InputSpec("image", 1, 1))
    output: OutputSpec = field(default_factory=lambda: OutputSpec("probability"))
    normalization: str = choices(*sorted(NORMALIZATIONS), default="zero_one", required=True)
    #: per-pixel probability above which a pixel counts as defective
    threshold: float = number(0.5, gt=0, lt=1, required=True)
    #: connected regions smaller than this many pixels are ignored
    min_defect_area: int = number(16, ge=0, required=True)
    #: the line draws the defect mask at this score: the regions above it that touch a region the
    #: decision kept (converter/regions.mask_regions); null: at ``threshold``
    mask_threshold: float | None = number(None, gt=0, lt=1)
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source_checkpoint_sha256: str = ""
    tool_versions: dict[str, str] = field(default_factory=dict)
    #: precision -> file name inside the package ("fp32": "model.onnx", ...)
    files: dict[str, str] = field(
        default_factory=lambda: {"fp32": "model.onnx"},
        metadata={
            "required": True,
            "rule": Rule(lambda v: "fp32" in v, 'must name the fp32 graph, e.g. {"fp32": "model.onnx"}'),
        },
    )
    #: file name -> sha256 (hex) of that file as it was written; one entry per name in ``files``
    files_sha256: dict[str, str] = field(default_factory=dict)
    #: results of accuracy gates (fp16 / int8 / uint8 against fp32), written by the converter, and
    #: per backend and precision by `lineside gate` ("openvino:bf16", ...); absent keys: never run
    gates: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = number(SCHEMA_VERSION, ge=1, required=True)

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
        return _parse(read_json_object(path, fix=REEXPORT, error=ManifestError), str(path))


def _parse(data: Any, source: str) -> ModelManifest:
    if not isinstance(data, dict):
        msg = f"{source}: expected a JSON object, got {type(data).__name__}; {REEXPORT}"
        raise ManifestError(msg)
    version = data.get("schema_version")
    if isinstance(version, int) and version not in READABLE_SCHEMAS:
        msg = (
            f"{source}: schema_version {version} is not supported by this lineside "
            f"(it reads {', '.join(map(str, READABLE_SCHEMAS))}); "
            "re-export the package with this lineside (`lineside export`)"
        )
        raise ManifestError(msg)
    if version in READABLE_SCHEMAS and version >= 2 and "files_sha256" not in data:
        raise ManifestError(f"{source}: missing key 'files_sha256'; {REEXPORT}")
    manifest = build(ModelManifest, data, source, error=ManifestError, fix=REEXPORT)
    if manifest.schema_version >= 2 or manifest.files_sha256:
        # from schema 2 on, one sha256 per named graph (a schema 1 manifest saved again, a gate
        # recorded in it, writes its empty files_sha256 back)
        for name in manifest.files.values():
            value = manifest.files_sha256.get(name)
            if value is None or not _SHA256.check(value):
                msg = (
                    f"{source}: key 'files_sha256' has no valid sha256 for {name!r} (got {value!r}); "
                    "re-run `lineside export`"
                )
                raise ManifestError(msg)
    return manifest
