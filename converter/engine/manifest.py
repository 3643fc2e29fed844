"""The engine manifest (``<plan>.json`` beside every ``.plan``) and the compatibility check.

A TensorRT plan runs only on the GPU model and TensorRT version it was built with.
The manifest records both (and the CUDA toolkit, CUDA driver API and NVIDIA driver versions,
precision, profile, the ONNX hash, the plan's own hash, the build time and the share of
layers TensorRT ran in each precision) so a runtime can refuse a mismatch *before* it deserializes the plan:
deserializing a foreign plan can crash the process. The plan itself stays a plain
TensorRT plan (trtexec and Polygraphy can load it).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from converter.errors import LinesideError
from converter.schema import Rule, build, read_json_object

#: 2: the versions are named for what they are (cuda_toolkit_version, cuda_driver_api_version,
#: nvidia_driver_version; 1 had cuda_version/driver_version) and layer_precisions was added
ENGINE_SCHEMA_VERSION = 2


class EngineManifestError(LinesideError, ValueError):
    """An engine manifest is missing or does not match the schema."""


class EngineMismatchError(LinesideError, RuntimeError):
    """An engine was built for another GPU, TensorRT version or ONNX graph."""


@dataclass
class MachineInfo:
    """What an engine depends on, as found on this machine (see machine.probe_machine)."""

    tensorrt_version: str
    #: the CUDA toolkit pycuda was built against (``pycuda.driver.get_version()``), "12.9.0"
    cuda_toolkit_version: str
    #: the CUDA driver API version the installed driver supports (``cuDriverGetVersion``), "12.9"
    cuda_driver_api_version: str
    gpu_name: str
    #: "8.9" style
    compute_capability: str
    #: the NVIDIA driver's own number, "575.57.08" (NVML or nvidia-smi); "" when neither answers
    nvidia_driver_version: str = ""


#: the fix every engine manifest error names
REBUILD = "rebuild the engine with `lineside build-engine`"
_PROFILES = Rule(
    lambda v: bool(v) and all({"min", "opt", "max"} <= set(p) for p in v),
    "must list the min/opt/max shapes of each optimization profile",
)


@dataclass
class EngineManifest:
    """What ``<plan>.json`` holds."""

    plan_file: str
    model_id: str
    precision: str
    #: True when built from the FP32 graph with TensorRT 10's BuilderFlag.FP16 (not strongly typed)
    builder_flag_fp16: bool
    strongly_typed: bool
    onnx_file: str
    onnx_sha256: str
    input_name: str
    #: {"input": name, "min": [..], "opt": [..], "max": [..]} per optimization profile
    profiles: list[dict[str, Any]] = field(metadata={"rule": _PROFILES})
    tensorrt_version: str
    cuda_toolkit_version: str
    cuda_driver_api_version: str
    gpu_name: str
    compute_capability: str
    workspace_bytes: int
    build_seconds: float
    created_at: str = ""
    tool_versions: dict[str, str] = field(default_factory=dict)
    #: sha256 of the plan as built, checked before TensorRT deserializes it; empty in
    #: manifests written before it was recorded (those plans are not checked)
    plan_sha256: str = ""
    nvidia_driver_version: str = ""
    #: share of the engine's compute layers per precision ({"fp16": 0.93, "fp32": 0.07, ...}),
    #: from its layer information (``<plan>.layers.json``, see layers.py); empty when TensorRT
    #: gave none
    layer_precisions: dict[str, float] = field(default_factory=dict)
    schema_version: int = ENGINE_SCHEMA_VERSION

    @property
    def max_batch(self) -> int:
        return int(self.profiles[0]["max"][0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path


def manifest_path(plan: str | Path) -> Path:
    """``engines/x.plan`` -> ``engines/x.plan.json``."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def load_engine_manifest(plan: str | Path) -> EngineManifest:
    """Read and validate the manifest of ``plan``; refuse a plan without one."""
    path = manifest_path(plan)
    if not path.is_file():
        msg = (
            f"{plan}: no engine manifest ({path.name}); lineside does not load a plan whose GPU and "
            "TensorRT version it cannot check. Rebuild it with `lineside build-engine`"
        )
        raise EngineManifestError(msg)
    data = read_json_object(path, fix=REBUILD, error=EngineManifestError)
    if data.get("schema_version") != ENGINE_SCHEMA_VERSION:
        msg = (
            f"{path}: engine manifest schema_version {data.get('schema_version')!r} is not "
            f"{ENGINE_SCHEMA_VERSION}; rebuild the engine with this lineside"
        )
        raise EngineManifestError(msg)
    return build(EngineManifest, data, str(path), error=EngineManifestError, fix=REBUILD)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def plan_name(machine: MachineInfo, precision: str, max_batch: int | None = None) -> str:
    """``<gpu>-sm<cc>-trt<version>-b<max>-<precision>.plan``: one file per GPU, TensorRT, batch
    profile and precision (DeepStream names its engines ``..._b16_gpu0_fp16`` for the same
    reason), so a rebuild with another ``--batch`` does not overwrite the plan.

    Without ``max_batch`` the name has no ``-b<max>`` (the name before the profile was part of
    it; such plans still load: the runtime reads their manifest, not their name).
    """
    sm = machine.compute_capability.replace(".", "")
    batch = f"-b{max_batch}" if max_batch is not None else ""
    return f"{_slug(machine.gpu_name)}-sm{sm}-trt{machine.tensorrt_version}{batch}-{precision}.plan"


def mismatches(manifest: EngineManifest, machine: MachineInfo, onnx_sha256: str | None = None) -> list[str]:
    """Every reason ``manifest``'s engine cannot run on ``machine``, each naming both sides."""
    reasons = []
    if manifest.gpu_name != machine.gpu_name or manifest.compute_capability != machine.compute_capability:
        reasons.append(
            f"GPU: engine built for {manifest.gpu_name} (sm {manifest.compute_capability}), "
            f"this machine has {machine.gpu_name} (sm {machine.compute_capability})"
        )
    if manifest.tensorrt_version != machine.tensorrt_version:
        reasons.append(
            f"TensorRT: engine built with {manifest.tensorrt_version}, "
            f"this machine has {machine.tensorrt_version}"
        )
    if onnx_sha256 is not None and manifest.onnx_sha256 != onnx_sha256:
        reasons.append(
            f"ONNX: engine built from {manifest.onnx_file} sha256 {manifest.onnx_sha256[:12]}, "
            f"the package's graph is now {onnx_sha256[:12]} (re-exported since)"
        )
    return reasons


def version_tuple(text: str) -> tuple[int, ...]:
    """The first three numbers of a version string, to compare: "3.11.3" -> (3, 11, 3)."""
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def warnings_for(manifest: EngineManifest, machine: MachineInfo) -> list[str]:
    """Differences that do not stop the engine but are worth a log line."""
    notes = []
    if manifest.nvidia_driver_version and machine.nvidia_driver_version:
        # the real driver numbers when both sides know them (NVML / nvidia-smi)
        here, there, what = machine.nvidia_driver_version, manifest.nvidia_driver_version, "NVIDIA driver"
    else:
        here, there = machine.cuda_driver_api_version, manifest.cuda_driver_api_version
        what = "CUDA driver API"
    if here and there and version_tuple(here) < version_tuple(there):
        notes.append(f"{what} {here} is older than the build machine's {there}")
    return notes


def check_compatible(
    manifest: EngineManifest, machine: MachineInfo, plan: str | Path, onnx_sha256: str | None = None
) -> None:
    """Raise EngineMismatchError (naming both sides and the fix) if the engine does not fit."""
    reasons = mismatches(manifest, machine, onnx_sha256)
    if reasons:
        msg = (
            f"{plan}: refusing to load this engine: {'; '.join(reasons)}. Rebuild it on this machine with "
            "`lineside build-engine PACKAGE` (engines are specific to a GPU model and TensorRT version)"
        )
        raise EngineMismatchError(msg)


def check_plan_hash(manifest: EngineManifest, plan: str | Path) -> None:
    """Refuse a plan whose bytes are not the ones its manifest was written for (a manifest
    from before ``plan_sha256`` was recorded is not checked)."""
    from converter.package import sha256_file

    if manifest.plan_sha256 and sha256_file(plan) != manifest.plan_sha256:
        msg = (
            f"{plan}: sha256 does not match {manifest_path(plan).name} (plan changed after it was built); "
            "rebuild it with `lineside build-engine PACKAGE`"
        )
        raise EngineMismatchError(msg)
