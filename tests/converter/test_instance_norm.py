"""The instance norm reaches the package as ONNX's InstanceNormalization op, with the same map
as the arithmetic tf2onnx writes for it (converter/instance_norm.py), and nothing else is
touched."""

from __future__ import annotations

import numpy as np
import pytest

from converter import onnx_graph
from converter.instance_norm import cancel_transposes, fuse_instance_norms
from tests.conftest import import_tensorflow_or_skip
from tests.converter.conftest import recipe_model

SIZE = 64


def _to_onnx(model, tmp_path):
    """``model`` through Keras' own ONNX export (tf2onnx), as ``lineside export`` does it."""
    import onnx
    import tensorflow as tf

    spec = tf.TensorSpec((None, SIZE, SIZE, 1), tf.float32, name="image")
    path = tmp_path / "raw.onnx"
    model.export(str(path), format="onnx", input_signature=[spec], opset_version=17, verbose=False)
    return onnx.load(str(path))


def _trained_looking(model) -> None:
    """Give every GroupNormalization a scale and an offset far from 1 and 0, as training
    leaves them: a fused op that dropped or swapped them would then change the map."""
    import keras

    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.GroupNormalization):
            layer.set_weights(
                [
                    rng.uniform(0.3, 2.0, w.shape).astype(np.float32)
                    if i == 0
                    else rng.normal(0, 0.5, w.shape).astype(np.float32)
                    for i, w in enumerate(layer.get_weights())
                ]
            )


def _frames(n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(7)
    light = rng.uniform(0.3, 0.6, (n, 1, 1, 1)) + np.linspace(-0.1, 0.1, SIZE)[None, :, None, None]
    return np.clip(light + rng.normal(0, 0.1, (n, SIZE, SIZE, 1)), 0, 1).astype(np.float32)


def _run(model, x: np.ndarray) -> np.ndarray:
    return onnx_graph.session(model.SerializeToString()).run(None, {"image": x})[0]


def _ops(model, op_type: str) -> int:
    return sum(node.op_type == op_type for node in model.graph.node)


def test_every_instance_norm_of_a_tinyunet_becomes_one_op_with_the_same_map(tmp_path):
    keras_model = recipe_model(
        architecture="tinyunet",
        base_filters=4,
        batch_norm=True,
        standardize=True,
        instance_norm=True,
        input_stride=2,
    )
    import keras
    import onnx

    _trained_looking(keras_model)
    norms = sum(isinstance(layer, keras.layers.GroupNormalization) for layer in keras_model.layers)
    model = _to_onnx(keras_model, tmp_path)
    x = _frames()
    before = _run(model, x)
    transposes = _ops(model, "Transpose")

    assert fuse_instance_norms(model) == norms > 10
    onnx.checker.check_model(model)
    assert _ops(model, "InstanceNormalization") == norms
    # what is left of the arithmetic is model.standardize's: two means (of x and of its square)
    assert _ops(model, "ReduceMean") == 2 and _ops(model, "Sqrt") == 1
    # float32 round-off in the statistics, carried through 23 norms with scales up to 2: 3e-5 seen;
    # a lost scale or offset, or another epsilon, moves the map by far more
    np.testing.assert_allclose(_run(model, x), before, atol=1e-4)
    np.testing.assert_allclose(_run(model, x), keras_model.predict(x, verbose=0), atol=1e-4)

    optimized = cancel_transposes(model)
    onnx.checker.check_model(optimized)
    # the convs' NHWC<->NCHW pairs cancel once no five-axis Reshape stands between them
    assert _ops(optimized, "Transpose") < transposes / 4
    assert _ops(optimized, "InstanceNormalization") == norms
    np.testing.assert_allclose(_run(optimized, x), _run(model, x), atol=1e-6)


def _one_norm(tmp_path, trained: bool, **layer):
    """conv -> GroupNormalization(**layer) -> conv, in ONNX, and the Keras model."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 1))
    features = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    outputs = keras.layers.Conv2D(1, 1)(keras.layers.GroupNormalization(**layer)(features))
    model = keras.Model(inputs, outputs)
    if trained:
        _trained_looking(model)
    return _to_onnx(model, tmp_path), model


@pytest.mark.parametrize(
    ("layer", "trained"),
    [
        ({}, False),
        ({"center": False, "scale": False}, False),
        ({"center": False}, True),
        ({"scale": False}, True),
    ],
    ids=["as_initialized", "no_scale_or_offset", "scale_only", "offset_only"],
)
def test_a_norm_whose_scale_or_offset_tf2onnx_folded_away_is_fused_too(tmp_path, layer, trained):
    """tf2onnx drops a Mul by ones and an Add of zeros: a fresh layer, or one made without
    them, still becomes one op, with the same map."""
    import_tensorflow_or_skip()
    model, keras_model = _one_norm(tmp_path, trained, groups=-1, **layer)
    x = _frames()
    before = _run(model, x)
    assert fuse_instance_norms(model) == 1 and _ops(model, "InstanceNormalization") == 1
    assert _ops(model, "ReduceMean") == 0
    # outputs of 3-5 (no sigmoid here): float32 round-off of 2e-5 seen
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(model, x), keras_model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_a_group_norm_over_several_channels_is_left_as_it_is(tmp_path):
    """Two channels a group is not an instance norm: the graph stays as it was, byte for byte."""
    import_tensorflow_or_skip()
    model, _ = _one_norm(tmp_path, True, groups=2)
    raw = model.SerializeToString()
    assert fuse_instance_norms(model) == 0
    assert model.SerializeToString() == raw
