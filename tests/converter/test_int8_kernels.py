"""The INT8 graph must be right in ONNX Runtime's own int8 kernels, not only in TensorRT.

On x86 without VNNI, ONNX Runtime runs the Q/DQ graph with uint8 activations and adds pairs
of uint8 x int8 products in int16, which saturates for 8-bit weights (see converter/int8.py).
A bright input through one channel of large same-sign weights is the worst case: the first
test fails there with full 8-bit weights, and the second one checks the bound on every CPU.
"""

from __future__ import annotations

import numpy as np

from converter import onnx_graph
from converter.int8 import quantize


def _one_conv(weight: np.ndarray):  # -> onnx.ModelProto
    """x (N, 1, 16, 16) -> Conv 3x3 (4 channels, pad 1) -> y, opset 17."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
        "one_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 16, 16])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project allows
    onnx.checker.check_model(model)
    return model


def _bright_conv():
    rng = np.random.default_rng(0)
    weight = rng.uniform(0.5, 1.0, (4, 1, 3, 3)).astype(np.float32)
    weight[1] *= -1  # both signs: saturation clips at +32767 and at -32768
    images = rng.uniform(0.6, 1.0, (8, 1, 16, 16)).astype(np.float32)  # bright: uint8 codes near 255
    return _one_conv(weight), images


def test_int8_graph_matches_fp32_in_onnxruntime_kernels():
    fp32, images = _bright_conv()
    # calibrated on them: no clipping error, only rounding; this Conv reads the input, which
    # quantize keeps in float by default, so it is quantized here to test the int8 kernel
    int8 = quantize(fp32, images, float_image_layers=False)
    ref = onnx_graph.session(fp32.SerializeToString()).run(None, {"x": images})[0]
    # default session options, as the line's onnxruntime backend uses: fused int8 kernels
    out = onnx_graph.session(int8.SerializeToString()).run(None, {"x": images})[0]
    error = float(np.abs(out - ref).max()) / float(np.abs(ref).max())
    assert error < 0.03, f"INT8 Conv off by {error:.1%} of its output range in onnxruntime"


def test_int8_weights_cannot_saturate_int16_pairs():
    from onnx import numpy_helper

    fp32, images = _bright_conv()
    int8 = quantize(fp32, images, float_image_layers=False)
    weights = [
        numpy_helper.to_array(i).astype(np.int32)
        for i in int8.graph.initializer
        if i.data_type == 3 and "zero_point" not in i.name  # INT8 tensors that are not zero points
    ]
    assert weights
    # the largest pair VPMADDUBSW adds: 2 x uint8 255 x |w| must fit int16
    assert all(2 * 255 * int(np.abs(w).max()) <= 32767 for w in weights)
