"""The instance norm reaches the package as ONNX's InstanceNormalization op, with the same map
as the arithmetic tf2onnx writes for it (converter/instance_norm.py), and nothing else is
touched."""

from __future__ import annotations

import numpy as np
import pytest

from converter import onnx_graph
from converter.instance_norm import cancel_transposes, fuse_instance_norms
from tests.conftest import import_tensorflow_or_skip

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
    import_tensorflow_or_skip()
    import keras
    import onnx

    from training.config import load_config
    from training.models import build_model

    cfg = {"architecture": "tinyunet", "base_filters": 4, "batch_norm": True, "standardize": True}
    cfg.update(instance_norm=True, input_stride=2)
    keras_model = build_model(load_config({"dataset": {"root": "x"}, "model": cfg})["model"])
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


@pytest.mark.parametrize(
    "layer",
    [{"groups": 2}, {"groups": -1, "center": False, "scale": False}],
    ids=["two_channels_a_group", "no_scale_or_offset"],
)
def test_other_group_norms_are_left_as_they_are(tmp_path, layer):
    """A GroupNormalization over several channels is not an instance norm; one without scale
    and offset is written differently by tf2onnx. Both stay as they were, byte for byte."""
    import_tensorflow_or_skip()
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    features = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    outputs = keras.layers.Conv2D(1, 1)(keras.layers.GroupNormalization(**layer)(features))
    model = _to_onnx(keras.Model(inputs, outputs), tmp_path)
    raw = model.SerializeToString()
    assert fuse_instance_norms(model) == 0
    assert model.SerializeToString() == raw
