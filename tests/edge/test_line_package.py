"""The untrained line package (tests/packages.py) is what the line tests take it for: a package
`lineside run` accepts, of the exported model's I/O, deciding as its docstring says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from converter.package import ModelPackage
from converter.preprocessing import normalize
from converter.synthetic import render
from edge.config import DecisionConfig
from edge.postprocess import FAIL, PASS, decide
from tests.conftest import MODEL_CLASS, MODEL_SIZE
from tests.packages import BRIGHT, SLOW_HEAVY


def decisions(package: Path, images: np.ndarray) -> list[str]:
    opened = ModelPackage.open(package)
    m = opened.manifest
    session = ort.InferenceSession(str(opened.onnx_path()), providers=["CPUExecutionProvider"])
    x = normalize(images, m.normalization)[..., None].astype(np.float32)
    probs = session.run([m.output.name], {m.input.name: x})[0][..., 0]
    rules = DecisionConfig(threshold=m.threshold, min_defect_area=m.min_defect_area)
    return [decide(p, rules).decision for p in probs]


def test_the_line_package_is_a_valid_package_of_the_exported_models_io(line_package: Path) -> None:
    package = ModelPackage.open(line_package)
    assert package.verify() == []  # every graph has its sha256, and it matches
    package.check_graph_io("fp32")
    m = package.manifest
    assert (m.input.name, m.input.layout, m.input.channels, m.input.height) == (
        "image",
        "NHWC",
        1,
        MODEL_SIZE,
    )
    assert (m.output.name, m.output.activation, m.normalization) == ("probability", "sigmoid", "zero_one")


def test_bright_pixels_are_defects(line_package: Path) -> None:
    size = MODEL_SIZE
    dark = np.full((size, size), int(255 * BRIGHT) - 15, np.uint8)
    spot = dark.copy()
    spot[40:50, 60:70] = 255  # 10x10 bright pixels: above min_defect_area
    speck = dark.copy()
    speck[40, 60:62] = 255  # 1x2: its 3x3 mean lights 6 pixels, below min_defect_area
    white = np.full((size, size), 255, np.uint8)
    black = np.zeros((size, size), np.uint8)
    got = decisions(line_package, np.stack([dark, spot, speck, white, black]))
    assert got == [PASS, FAIL, PASS, FAIL, PASS]


def test_synthetic_frames_give_both_decisions(line_package: Path) -> None:
    """The synthetic cameras' frames (surface brightness varies per frame) are a mix of PASS and
    FAIL, so the line tests see both; which is which follows brightness, not the defects."""
    rng = np.random.default_rng(0)
    frames = np.stack([render(rng, MODEL_SIZE, MODEL_CLASS, bool(i % 2))[0] for i in range(24)])
    got = decisions(line_package, frames)
    assert 4 <= got.count(FAIL) <= 20, got


def test_the_slow_package_decides_as_the_line_package_and_its_dead_weight_is_computed(
    line_package: Path, slow_line_package: Path, tmp_path: Path
) -> None:
    """``slow_line_package``'s dead branch changes no bit of the output, and ONNX Runtime at
    ORT_ENABLE_ALL (the line's level) still computes it: its convolutions survive optimization."""
    import onnx

    def session(package: Path, optimized: Path | None = None) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if optimized is not None:
            options.optimized_model_filepath = str(optimized)
        path = ModelPackage.open(package).onnx_path()
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(1)
    frames = [render(rng, MODEL_SIZE, MODEL_CLASS, bool(i % 2))[0] for i in range(8)]
    frames += [np.full((MODEL_SIZE, MODEL_SIZE), v, np.uint8) for v in (0, int(255 * BRIGHT), 255)]
    x = normalize(np.stack(frames), "zero_one")[..., None].astype(np.float32)
    optimized = tmp_path / "slow-optimized.onnx"
    rule = session(line_package).run(None, {"image": x})[0]
    slow = session(slow_line_package, optimized).run(None, {"image": x})[0]
    assert np.array_equal(rule, slow)
    # the rule's conv, the branch's SLOW_HEAVY 3x3 and its 1x1 (FusedConv or nchwc Conv once fused)
    ops = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    assert sum(op.endswith("Conv") for op in ops) == SLOW_HEAVY + 2, ops
