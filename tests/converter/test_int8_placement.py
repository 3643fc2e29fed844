"""Which layers the INT8 graph quantizes: every compute-heavy op but the ones that read the image.

Why the image's first Conv stays float is measured in converter/int8.py; test_gates.py checks
the placement on a trained model, and test_gates_project_model.py the gate it lets pass.
"""

from __future__ import annotations

import numpy as np

from converter import onnx_graph
from converter.int8 import image_layers, quantize


def _two_convs():  # -> onnx.ModelProto
    """x NHWC -> Transpose -> Conv "first" -> Relu -> Conv "second" -> y, reshaped with Shape(x)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1, (4, 1, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="first"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="second"),
        helper.make_node("Transpose", ["c2"], ["nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
        # sizes taken from the image do not make "second" read the image
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Slice", ["shape", "zero", "three"], ["nhw"], name="nhw"),
        helper.make_node("Concat", ["nhw", "four"], ["out_shape"], axis=0, name="out_shape"),
        helper.make_node("Reshape", ["nhwc", "out_shape"], ["y"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 16, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, 16, 4])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(np.zeros(4, np.float32), "b2"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([3], np.int64), "three"),
            numpy_helper.from_array(np.array([4], np.int64), "four"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project allows
    onnx.checker.check_model(model)
    return model


def test_image_layers_are_the_convs_the_input_reaches_first():
    assert image_layers(_two_convs()) == ["first"]


def test_the_conv_that_reads_the_image_stays_float_and_the_next_one_is_int8():
    model = _two_convs()
    images = np.random.default_rng(1).uniform(0.3, 0.9, (8, 16, 16, 1)).astype(np.float32)
    int8 = quantize(model, images)
    producer = {out: node.op_type for node in int8.graph.node for out in node.output}
    convs = {node.name: node for node in int8.graph.node if node.op_type == "Conv"}
    assert producer.get(convs["first"].input[0]) != "DequantizeLinear"
    assert convs["first"].input[1] == "w1"  # the float weights, untouched
    assert producer[convs["second"].input[0]] == producer[convs["second"].input[1]] == "DequantizeLinear"
    # without the rule both are quantized, as onnxruntime places Q/DQ by default
    everything = quantize(model, images, float_image_layers=False)
    producer = {out: node.op_type for node in everything.graph.node for out in node.output}
    first = next(node for node in everything.graph.node if node.name == "first")
    assert producer[first.input[0]] == producer[first.input[1]] == "DequantizeLinear"
    ref = onnx_graph.session(model.SerializeToString()).run(None, {"x": images})[0]
    out = onnx_graph.session(int8.SerializeToString()).run(None, {"x": images})[0]
    assert float(np.abs(out - ref).max()) < 0.05 * float(np.abs(ref).max())


def test_unnamed_nodes_are_named_so_the_image_conv_can_stay_float():
    model = _two_convs()
    for node in model.graph.node:
        node.name = ""
    images = np.random.default_rng(1).uniform(0.3, 0.9, (8, 16, 16, 1)).astype(np.float32)
    convs = [node for node in quantize(model, images).graph.node if node.op_type == "Conv"]
    assert convs[0].input[1] == "w1" and convs[1].input[1] != "w2"  # float, then dequantized
