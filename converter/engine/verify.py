"""``lineside build-engine --verify``: the engine against ONNX Runtime on validation images,
in the manner of Polygraphy's ``run --trt --onnxrt``, reported as the line sees it (mask
Dice and pass/fail agreement, see converter.gate).

Two comparisons, so TensorRT's own error is told apart from the cast's:

- engine vs ONNX Runtime running the FP32 graph: what the line loses in all (gated);
- engine vs ONNX Runtime running the very graph the engine was built from
  (``manifest.onnx_file``, e.g. ``model.fp16.onnx``): what TensorRT adds on its own.

Each prints the max absolute and max relative difference. And the engine must run in the
precision it was built for (layers.precision_problem): an "fp16" engine with less than
half of its compute layers in FP16, or an "int8" engine without an INT8 layer, fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converter import onnx_graph
from converter.engine.layers import format_shares, precision_problem
from converter.engine.manifest import load_engine_manifest
from converter.engine.runtime import EngineRunner
from converter.gate import FP16_BOUNDS, INT8_BOUNDS, GateReport, compare
from converter.package import ModelPackage, sha256_file
from converter.preprocessing import normalize
from converter.samples import SampleError, load_samples

#: relative differences divide by max(|reference|, this): an output is a probability, and
#: below 1e-3 it is "no defect" for the line, so a ratio there says nothing
REL_FLOOR = 1e-3


@dataclass(frozen=True)
class Difference:
    """Max absolute and max relative difference of the engine's output against a reference."""

    reference: str
    max_abs: float
    max_rel: float

    def line(self) -> str:
        return (
            f"engine vs {self.reference}: max |diff| {self.max_abs:.3g}, max relative diff {self.max_rel:.3g}"
        )


def difference(reference: np.ndarray, candidate: np.ndarray, name: str) -> Difference:
    """Difference of two outputs of the same shape (NaN/Inf in the candidate give inf)."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if not np.isfinite(cand).all():
        return Difference(name, float("inf"), float("inf"))
    diff = np.abs(ref - cand)
    rel = diff / np.maximum(np.abs(ref), REL_FLOOR)
    return Difference(name, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)))


@dataclass
class VerifyReport:
    """What ``--verify`` found: the gate against FP32, both differences, the precision check."""

    gate: GateReport
    differences: list[Difference]
    precision: str
    layer_precisions: dict[str, float]
    #: why the engine does not run in its precision ("" when it does or nothing is known)
    precision_problem: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.gate.passed and not self.precision_problem

    def summary(self) -> str:
        """Several lines: the gate, each difference, the layer precisions and the verdict."""
        lines = [self.gate.summary(), *("  " + d.line() for d in self.differences)]
        lines.append(f"  layer precisions: {format_shares(self.layer_precisions)}")
        lines.extend("  " + note for note in self.notes)
        if self.precision_problem:
            lines.append(f"precision check FAIL: {self.precision_problem}")
        return "\n".join(lines)


def verify_engine(
    package_dir: str | Path,
    plan_path: str | Path,
    *,
    data_dir: str | Path | None = None,
    samples: int = 32,
    device: int = 0,
) -> VerifyReport:
    """Run the engine, ONNX Runtime FP32 and ONNX Runtime on the engine's own graph on
    ``samples`` images; gate against FP32 with the precision's bounds and check the
    engine's layer precisions."""
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
    fp32_path = package.onnx_path("fp32")
    reference = onnx_graph.run_batches(onnx_graph.session(fp32_path), images)
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
    gate = compare(
        reference,
        candidate,
        name=f"TensorRT {engine_manifest.precision} engine vs ONNX Runtime FP32",
        threshold=m.threshold,
        min_defect_area=m.min_defect_area,
        bounds=bounds,
        names=chosen.names,
    )
    differences = [difference(reference, candidate, f"ONNX Runtime {fp32_path.name}")]
    notes = []
    if graph.resolve() == fp32_path.resolve():
        notes.append(f"the engine was built from {graph.name} itself: the two comparisons are one")
    else:
        # the same graph TensorRT was given, in ONNX Runtime: TensorRT's own error, not the cast's
        own = onnx_graph.run_batches(onnx_graph.session(graph), images)
        differences.append(
            difference(own, candidate, f"ONNX Runtime {graph.name} (the graph it was built from)")
        )
    shares = engine_manifest.layer_precisions
    problem = precision_problem(engine_manifest.precision, shares)
    if not shares or not any(v for k, v in shares.items() if k != "unknown"):
        notes.append("layer precisions unknown (no layer information in the engine manifest): not checked")
    return VerifyReport(
        gate=gate,
        differences=differences,
        precision=engine_manifest.precision,
        layer_precisions=shares,
        precision_problem=problem,
        notes=notes,
    )
