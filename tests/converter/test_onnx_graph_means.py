"""A mean over a whole image (model.standardize, the instance norm) is summed one axis at a time
in the exported graph, so ONNX Runtime gets it as exact as Keras does (converter/onnx_graph.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converter import onnx_graph


def _mean_graph(axes: list[int], keepdims: int = 1):
    """One ReduceMean of a (N, 512, 512, 1) image over ``axes``, the way tf2onnx writes the
    moments of Keras' LayerNormalization."""
    shape = ["batch"] + [1 if i in axes or i - 4 in axes else d for i, d in enumerate((512, 512, 1), 1)]
    if not keepdims:
        shape = ["batch"] + [d for i, d in enumerate((512, 512, 1), 1) if i not in axes]
    node = helper.make_node("ReduceMean", ["image"], ["mean"], name="moments", axes=axes, keepdims=keepdims)
    graph = helper.make_graph(
        [node],
        "mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 512, 512, 1])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _texture(n: int = 4) -> np.ndarray:
    """8-bit camera frames as the model gets them (k/255): a mean level of 0.3-0.6, light falling
    off across the frame and texture around it. On such frames the mean of the graph as tf2onnx
    wrote it was off by 1e-5 (5e-5 on the real-surface photographs; a flat frame, 3e-4)."""
    rng = np.random.default_rng(5)
    levels = rng.uniform(0.3, 0.6, (n, 1, 1, 1)) + np.linspace(-0.12, 0.12, 512)[None, :, None, None]
    frames = np.clip(levels + rng.normal(0, 0.12, (n, 512, 512, 1)), 0, 1)
    return (np.round(frames * 255) / 255).astype(np.float32)


def _run(model, x: np.ndarray) -> np.ndarray:
    return onnx_graph.session(model.SerializeToString()).run(None, {"image": x})[0]


def test_a_mean_over_the_whole_image_is_split_into_one_axis_at_a_time():
    model = _mean_graph([1, 2, 3])
    assert onnx_graph.split_wide_means(model) == 1
    onnx.checker.check_model(model, full_check=False)
    means = [n for n in model.graph.node if n.op_type == "ReduceMean"]
    axes = [helper.get_attribute_value(a) for n in means for a in n.attribute if a.name == "axes"]
    assert axes == [[3], [2], [1]]
    assert means[-1].output[0] == "mean"  # what the rest of the graph reads is unchanged

    x = _texture()
    exact = x.astype(np.float64).mean(axis=(1, 2, 3), keepdims=True)
    got = _run(model, x)
    assert got.shape == exact.shape
    # float32 itself holds 0.5 to 3e-8; on real frames the unsplit mean's 5e-5 moved a BatchNorm
    # model's probability by up to 0.02
    assert np.abs(got - exact).max() < 1e-6, np.abs(got - exact).max()


def test_without_keepdims_the_axes_go_from_the_highest_so_their_numbers_hold():
    model = _mean_graph([1, 2], keepdims=0)
    onnx_graph.split_wide_means(model)
    x = _texture(2)
    got = _run(model, x)
    np.testing.assert_allclose(got, x.astype(np.float64).mean(axis=(1, 2)), atol=1e-6)
    assert got.shape == (2, 1)


@pytest.mark.parametrize("axes", [[2], [-3, -2]], ids=["one_axis", "negative_axes"])
def test_other_means_are_left_as_they_are(axes):
    model = _mean_graph(axes)
    before = model.SerializeToString()
    assert onnx_graph.split_wide_means(model) == 0
    assert model.SerializeToString() == before
