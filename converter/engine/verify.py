"""``lineside build-engine --verify``: the engine against ONNX Runtime FP32 on validation
images, in the manner of Polygraphy's ``run --trt --onnxrt``, reported as the line sees
it (mask Dice and pass/fail agreement, see converter.gate).
"""

from __future__ import annotations

import logging
from pathlib import Path

from converter import onnx_graph
from converter.engine.manifest import load_engine_manifest
from converter.engine.runtime import EngineRunner
from converter.gate import FP16_BOUNDS, INT8_BOUNDS, GateReport, compare
from converter.package import ModelPackage, sha256_file
from converter.preprocessing import normalize
from converter.samples import SampleError, load_samples

log = logging.getLogger(__name__)


def verify_engine(
    package_dir: str | Path,
    plan_path: str | Path,
    *,
    data_dir: str | Path | None = None,
    samples: int = 32,
    device: int = 0,
) -> GateReport:
    """Run engine and ONNX Runtime FP32 on ``samples`` images; gate with the precision's bounds."""
    package = ModelPackage.open(package_dir)
    m = package.manifest
    engine_manifest = load_engine_manifest(plan_path)
    data_dir = data_dir or m.dataset.get("root")
    if not data_dir:
        msg = f"{package.root}: --verify needs validation images; pass --data DATASET_DIR"
        raise SampleError(msg)
    chosen = load_samples(
        data_dir, m.input.height, m.input.width, m.input.channels, samples, m.dataset.get("classes")
    )
    images = normalize(chosen.images, m.normalization)
    reference = onnx_graph.run_batches(onnx_graph.session(package.onnx_path("fp32")), images)
    graph = package.root / engine_manifest.onnx_file
    runner = EngineRunner(
        plan_path, onnx_sha256=sha256_file(graph) if graph.is_file() else None, device=device
    )
    runner.load()
    try:
        candidate = runner.infer(images)
    finally:
        runner.free()
    bounds = INT8_BOUNDS if engine_manifest.precision == "int8" else FP16_BOUNDS
    return compare(
        reference,
        candidate,
        name=f"TensorRT {engine_manifest.precision} engine vs ONNX Runtime FP32",
        threshold=m.threshold,
        min_defect_area=m.min_defect_area,
        bounds=bounds,
        names=chosen.names,
    )
