"""The INT8 graph laid out for ONNX Runtime (``target="onnxruntime"``) stays 8-bit end to end.

Why the layout is faster than FP32 on the CPU is measured in docs/converter.md. These tests
fail if onnxruntime's optimized graph again runs a Relu, a MaxPool, a Concat or an upsampling
Tile in float between dequantize/quantize pairs, which is what made INT8 slower than FP32.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from converter import onnx_graph
from converter.int8 import quantize, sink_dequantize
from converter.variants import add_variants
from tests.converter.conftest import SIZE

ROOT = Path(__file__).resolve().parents[2]


def _unet_block():  # -> onnx.ModelProto
    """A TinyUNet in miniature, as tf2onnx writes Keras: NHWC in, Conv+Relu, MaxPool,
    UpSampling2D as Unsqueeze -> Tile -> Reshape, Concat with the skip, logit Conv, Sigmoid."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(0, 1, (4, 1, 3, 3)),
        "w2": rng.normal(0, 0.4, (4, 4, 3, 3)),
        "w3": rng.normal(0, 0.3, (8, 4, 3, 3)),
        "w4": rng.normal(0, 0.2, (4, 12, 3, 3)),
        "w5": rng.normal(0, 0.5, (1, 4, 1, 1)),
        "b1": rng.normal(0, 0.1, 4),
        "b2": rng.normal(0, 0.1, 4),
        "b3": rng.normal(0, 0.1, 8),
        "b4": rng.normal(0, 0.1, 4),
        "b5": np.zeros(1),
    }
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    tensors += [
        numpy_helper.from_array(np.array(v, np.int64), k)
        for k, v in {
            "ax4": [4],
            "ax3": [3],
            "rep_w": [1, 1, 1, 1, 2],
            "rep_h": [1, 1, 1, 2, 1],
            "wide": [0, 0, 0, -1],
            "tall": [0, 0, -1, 16],
        }.items()
    ]
    pad = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], name="c1", **pad),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="c2", **pad),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], name="c3", **pad),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Unsqueeze", ["r3", "ax4"], ["u1"]),
        helper.make_node("Tile", ["u1", "rep_w"], ["t1"]),
        helper.make_node("Reshape", ["t1", "wide"], ["s1"]),
        helper.make_node("Unsqueeze", ["s1", "ax3"], ["u2"]),
        helper.make_node("Tile", ["u2", "rep_h"], ["t2"]),
        helper.make_node("Reshape", ["t2", "tall"], ["up"]),
        helper.make_node("Concat", ["up", "r2"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w4", "b4"], ["c4"], name="c4", **pad),
        helper.make_node("Relu", ["c4"], ["r4"]),
        helper.make_node("Conv", ["r4", "w5", "b5"], ["c5"], name="c5"),
        helper.make_node("Sigmoid", ["c5"], ["p"]),
        helper.make_node("Transpose", ["p"], ["y"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "unet_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 16, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, 16, 1])],
        tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project allows
    onnx.checker.check_model(model)
    return model


def _ort_optimized(model, tmp_path: Path):  # -> onnx.ModelProto
    """The graph onnxruntime runs after its default (ORT_ENABLE_ALL) optimizations."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def _images(n: int = 8) -> np.ndarray:
    return np.random.default_rng(1).uniform(0.2, 0.9, (n, 16, 16, 1)).astype(np.float32)


def test_onnxruntime_target_runs_int8_end_to_end_in_onnxruntime(tmp_path):
    fp32 = _unet_block()
    int8 = quantize(fp32, _images(), target="onnxruntime")
    ops = Counter(n.op_type for n in int8.graph.node)
    assert ops["Relu"] == 1  # only after the float image Conv; the others are folded into the Q
    zero_points = [i for i in int8.graph.initializer if i.name.endswith("zero_point") and i.data_type != 3]
    assert zero_points and all(i.data_type == 2 for i in zero_points)  # uint8 activations
    optimized = Counter(n.op_type for n in _ort_optimized(int8, tmp_path).graph.node)
    # c2..c5 as int8 kernels, the skip Concat in int8, MaxPool and the upsampling on 8-bit data
    assert optimized["QLinearConv"] == 4 and optimized["QLinearConcat"] == 1, optimized
    assert optimized["Relu"] == 0, optimized
    # one Q after the float image Conv, one DQ before the Sigmoid, none in between
    assert optimized["QuantizeLinear"] == 1 and optimized["DequantizeLinear"] == 1, optimized
    ref = onnx_graph.session(fp32.SerializeToString()).run(None, {"x": _images()})[0]
    out = onnx_graph.session(int8.SerializeToString()).run(None, {"x": _images()})[0]
    assert float(np.abs(out - ref).max()) < 0.05


def test_tensorrt_target_keeps_symmetric_int8_and_float_relu(tmp_path):
    int8 = quantize(_unet_block(), _images())
    zero_points = [i for i in int8.graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(i.data_type == 3 for i in zero_points)  # INT8, as TensorRT requires
    assert all(not any(i.int32_data) and not any(i.raw_data) for i in zero_points)  # zero point 0
    # the layout onnxruntime cannot fuse: a float Relu between the DQ after c2, c3, c4 and the
    # next Q (c1's Relu is fused into the float Conv)
    optimized = Counter(n.op_type for n in _ort_optimized(int8, tmp_path).graph.node)
    assert optimized["Relu"] == 3 and optimized["DequantizeLinear"] > 1, optimized


def test_dequantize_sinks_below_element_moves_exactly():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
        helper.make_node("Unsqueeze", ["dq", "ax"], ["u"]),
        helper.make_node("Tile", ["u", "rep"], ["t"]),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("Shape", ["dq"], ["size"]),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sink",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6]),
            helper.make_tensor_value_info("size", TensorProto.INT64, [2]),
        ],
        [
            numpy_helper.from_array(np.array(0.05, np.float32), "s"),
            numpy_helper.from_array(np.array(7, np.uint8), "z"),
            numpy_helper.from_array(np.array([2], np.int64), "ax"),
            numpy_helper.from_array(np.array([1, 1, 2], np.int64), "rep"),
            numpy_helper.from_array(np.array([2, 6], np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(0).uniform(-1, 12, (2, 3)).astype(np.float32)
    before = onnx_graph.session(model.SerializeToString()).run(None, {"x": x})
    assert sink_dequantize(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 1  # the pair in between is gone
    after = onnx_graph.session(model.SerializeToString()).run(None, {"x": x})
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_onnxruntime_target_passes_the_int8_gate_on_the_trained_model(package_copy, dataset):
    package = add_variants(
        package_copy,
        data_dir=dataset,
        precisions=("int8",),
        gate_samples=16,
        calibration_samples=16,
        int8_target="onnxruntime",
    )
    gate = package.manifest.gates["int8"]
    assert gate["passed"] and gate["dice"] >= 0.95 and gate["agreement"] >= 0.98, gate
    assert gate["target"] == "onnxruntime" and gate["reference_defect_pixels"] > 0
    model = onnx_graph.load(package.onnx_path("int8"))
    x = np.random.default_rng(0).random((3, SIZE, SIZE, 1), dtype=np.float32)
    out = onnx_graph.session(package.onnx_path("int8")).run(None, {"image": x})[0]
    assert out.shape == (3, SIZE, SIZE, 1) and np.isfinite(out).all()
    # the image Conv stays float with its Relu; every other Relu is folded into a Q
    assert [n.op_type for n in model.graph.node].count("Relu") == 1


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="unknown INT8 target 'gpu'; allowed: tensorrt, onnxruntime"):
        quantize(_unet_block(), _images(), target="gpu")


def test_bench_ratios_are_speeds_relative_to_the_first_graph():
    spec = importlib.util.spec_from_file_location("int8_bench", ROOT / "scripts" / "int8_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []
    times = bench.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=2)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 2  # warm-up, then alternating rounds
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 2, "b": 2}
    rows = bench.ratios({"fp32": [2.0, 4.0, 3.0], "int8": [1.0, 2.0, 1.5]}, batch=8)
    assert [r["graph"] for r in rows] == ["fp32", "int8"]
    assert rows[0]["vs_first"] == 1.0 and rows[1]["vs_first"] == pytest.approx(2.0)
    assert rows[1]["img_s"] == pytest.approx(8 / 1.5)
