"""``lineside inspect PACKAGE``: what a model package holds and what would run here."""

from __future__ import annotations

import json
from pathlib import Path

from converter import onnx_graph
from converter.engine.layers import format_shares, read_shares
from converter.engine.manifest import EngineManifestError, load_engine_manifest
from converter.engine.select import select_engine
from converter.errors import LinesideError
from converter.package import ModelPackage


def _graph_lines(package: ModelPackage) -> list[str]:
    lines = []
    for precision, name in sorted(package.manifest.files.items()):
        path = package.root / name
        if not path.is_file():
            lines.append(f"  {precision:5} {name}: MISSING")
            continue
        try:
            model = onnx_graph.load(path)
        except LinesideError as exc:
            lines.append(f"  {precision:5} {name}: {exc}")
            continue
        io = onnx_graph.io_summary(model)
        fmt = ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in io["inputs"])
        out = ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in io["outputs"])
        size = path.stat().st_size / 1e6
        lines.append(
            f"  {precision:5} {name} ({size:.2f} MB, opset {onnx_graph.opset(model)}): in {fmt} -> out {out}"
        )
    return lines


def _engine_lines(package: ModelPackage) -> list[str]:
    plans = package.engine_plans()
    if not plans:
        return ["  (none)"]
    lines = []
    for plan in plans:
        try:
            m = load_engine_manifest(plan)
        except EngineManifestError as exc:
            lines.append(f"  {plan.name}: {exc}")
            continue
        driver = f", NVIDIA driver {m.nvidia_driver_version}" if m.nvidia_driver_version else ""
        lines.append(
            f"  {plan.name}: {m.precision}, TensorRT {m.tensorrt_version}, {m.gpu_name} "
            f"sm {m.compute_capability}, CUDA toolkit {m.cuda_toolkit_version} "
            f"(driver API {m.cuda_driver_api_version}{driver}), "
            f"batch {m.profiles[0]['min'][0]}/{m.profiles[0]['opt'][0]}/{m.max_batch}, "
            f"from {m.onnx_file} ({m.onnx_sha256[:12]}), built in {m.build_seconds:.0f} s"
        )
        # the manifest's shares; the layer file beside the plan when the manifest has none
        shares = m.layer_precisions or read_shares(plan.with_name(plan.name + ".layers.json"))
        lines.append(f"    layer precisions: {format_shares(shares)}")
    return lines


def describe_package(path: str | Path) -> str:
    """A text report: manifest, graphs with their inputs/outputs, engines, engine choice."""
    package = ModelPackage.open(path)
    plan, reason = select_engine(package)
    manifest = json.dumps(package.manifest.to_dict(), indent=2, sort_keys=True)
    return "\n".join(
        [
            f"model package {package.root} ({package.model_id})",
            "manifest:",
            *("  " + line for line in manifest.splitlines()),
            "graphs:",
            *_graph_lines(package),
            "engines:",
            *_engine_lines(package),
            f"engine for this machine: {plan.name if plan else 'none (ONNX Runtime CPU)'}",
            f"  why: {reason}",
        ]
    )
