"""Each model builds for any size that divides by its stride, loads without custom objects and learns."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import needs_tensorflow, ppocr_detector
from training.models import ModelError, build_model, check_input_size, check_model_input

MODELS = {
    "tinyunet": {"architecture": "tinyunet", "base_filters": 4, "batch_norm": False},
    "tinyunet_bn": {"architecture": "tinyunet", "base_filters": 4, "batch_norm": True},
    "unet_lowered": {"architecture": "unet_lowered", "base_filters": 4, "dropout": 0.1},
    "mobilenetv2_unet": {"architecture": "mobilenetv2_unet", "base_filters": 2, "alpha": 0.35},
    "tinyunet_std_dilated": {
        "architecture": "tinyunet",
        "base_filters": 4,
        "batch_norm": True,
        "standardize": True,
        "bottleneck_dilation": 2,
    },
    "tinyunet_stem2": {"architecture": "tinyunet", "base_filters": 4, "batch_norm": True, "input_stride": 2},
    "tinyunet_instance_norm": {
        "architecture": "tinyunet",
        "base_filters": 4,
        "batch_norm": True,
        "instance_norm": True,
        "standardize": True,
        "input_stride": 2,
    },
    "lcnet_unet": {
        "architecture": "lcnet_unet",
        "base_filters": 4,
        "batch_norm": True,
        "encoder_weights": "ppocr",
    },
    "unet_lowered_instance_norm": {
        "architecture": "unet_lowered",
        "base_filters": 4,
        "batch_norm": True,
        "instance_norm": True,
    },
}


def _model_cfg(**kw):
    from training.config import load_config

    if kw.get("encoder_weights") == "ppocr" or kw.get("architecture") == "lcnet_unet":
        ppocr_detector()  # its trunk is built from the file, with or without its weights
    return load_config({"dataset": {"root": "x"}, "model": kw})["model"]


@needs_tensorflow
def test_tinyunet_matches_nvidia_block_structure():
    model = build_model(_model_cfg(architecture="tinyunet", base_filters=32))
    convs = {layer.name: layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"}
    # input block and 3 down blocks of 2 convs, bottleneck, 3 up blocks, output block
    assert [convs[f"{b}_conv1"].filters for b in ("input_block", "down_1", "down_2", "down_3")] == [
        32,
        32,
        64,
        128,
    ]
    assert convs["bottleneck_conv2"].filters == 256 and convs["bottleneck_upconv"].kernel_size == (2, 2)
    assert [convs[f"up_{i}_conv2"].filters for i in (1, 2, 3)] == [64, 32, 16]
    assert convs["output_logits"].kernel_size == (1, 1) and convs["output_logits"].filters == 1
    assert sum(layer.__class__.__name__ == "MaxPooling2D" for layer in model.layers) == 4
    assert sum(layer.__class__.__name__ == "UpSampling2D" for layer in model.layers) == 4
    assert model.input_shape == (None, None, None, 1) and model.output_shape == (None, None, None, 1)


@needs_tensorflow
@pytest.mark.parametrize("arch", ["tinyunet", "unet_lowered", "mobilenetv2_unet", "lcnet_unet"])
def test_a_standardized_model_sees_past_gain_and_offset(arch):
    """model.standardize: the same surface under another gain and offset gives the same map
    (within float error), and the layer is exactly per-image (x - mean) / std."""
    kw = {"alpha": 0.35, "base_filters": 2} if arch == "mobilenetv2_unet" else {"base_filters": 4}
    model = build_model(_model_cfg(architecture=arch, standardize=True, **kw))
    x = np.random.default_rng(1).random((2, 64, 64, 1)).astype(np.float32) * 0.6 + 0.2
    x[1] *= 0.5  # the second image: half the contrast
    brighter = x * 1.5 + 0.1  # what another gain and offset make of the same surfaces
    assert np.allclose(model.predict(x, verbose=0), model.predict(brighter, verbose=0), atol=2e-3)
    norm = model.get_layer("standardize")(x).numpy()
    var = x.var(axis=(1, 2, 3), keepdims=True)
    assert np.allclose(norm, (x - x.mean(axis=(1, 2, 3), keepdims=True)) / np.sqrt(var + 1e-4), atol=1e-4)
    plain = build_model(_model_cfg(architecture=arch, **kw))
    assert "standardize" not in [layer.name for layer in plain.layers]


@needs_tensorflow
def test_bottleneck_dilation_widens_only_the_bottleneck():
    model = build_model(_model_cfg(architecture="tinyunet", base_filters=4, bottleneck_dilation=3))
    dilations = {layer.name: layer.dilation_rate for layer in model.layers if hasattr(layer, "dilation_rate")}
    assert dilations["bottleneck_conv1"] == dilations["bottleneck_conv2"] == (3, 3)
    assert {d for n, d in dilations.items() if not n.startswith("bottleneck_conv")} == {(1, 1)}


@needs_tensorflow
@pytest.mark.parametrize("stride", [2, 4])
def test_a_strided_stem_runs_the_unet_at_a_fraction_of_the_resolution(stride):
    """model.input_stride: one conv of that size and stride sees every pixel once, the U-Net
    runs at 1/stride, the logits are upsampled to the input's size, and the sides must divide
    by 16 x stride."""
    import keras

    model = build_model(
        _model_cfg(architecture="tinyunet", base_filters=4, batch_norm=True, input_stride=stride)
    )
    stem = model.get_layer("stem")
    assert stem.kernel_size == stem.strides == (stride, stride)
    x = np.random.default_rng(0).random((1, 128, 64, 1)).astype(np.float32)
    assert model.predict(x, verbose=0).shape == (1, 128, 64, 1)
    first_block = keras.Model(model.input, model.get_layer("input_block_conv1").output)
    assert first_block.predict(x, verbose=0).shape[1:3] == (128 // stride, 64 // stride)
    plain = build_model(_model_cfg(architecture="tinyunet", base_filters=4, batch_norm=True))
    assert not {"stem", "output_upsample"} & {layer.name for layer in plain.layers}
    check_input_size("tinyunet", 512, 480, input_stride=2)
    with pytest.raises(ModelError, match="divisible by 32; got 496x512, try 512x512"):
        check_model_input({"architecture": "tinyunet", "input_stride": 2}, 496, 512)
    check_model_input({"architecture": "tinyunet"}, 496, 512)  # a run recorded before the option


@needs_tensorflow
def test_stem_filters_widen_the_stem_alone():
    """model.stem_filters: the strided stem's filters change, its window, its stride and every
    other layer stay."""
    cfg = _model_cfg(architecture="tinyunet", base_filters=4, batch_norm=True, input_stride=4)
    plain, wide = build_model(cfg), build_model({**cfg, "stem_filters": 12})
    assert plain.get_layer("stem").filters == 4 and wide.get_layer("stem").filters == 12
    assert wide.get_layer("stem").kernel_size == wide.get_layer("stem").strides == (4, 4)
    widths = {m: {layer.name: getattr(layer, "filters", None) for layer in m.layers} for m in (plain, wide)}
    assert {n for n in widths[plain] if widths[plain][n] != widths[wide][n]} == {"stem"}
    x = np.random.default_rng(0).random((1, 64, 64, 1)).astype(np.float32)
    assert wide.predict(x, verbose=0).shape == (1, 64, 64, 1)


@needs_tensorflow
def test_fine_filters_join_a_max_pooled_full_resolution_conv_to_the_stem():
    """model.fine_filters: a 3x3 conv at full resolution (no norm), max-pooled to the stem's
    resolution and joined to it; a one-pixel line lights the pooled map the same whichever
    row of the window it lies in, where the strided stem's response depends on the row."""
    import keras

    cfg = _model_cfg(architecture="tinyunet", base_filters=4, batch_norm=True, input_stride=4)
    model = build_model({**cfg, "fine_filters": 6})
    fine, pool = model.get_layer("fine"), model.get_layer("fine_pool")
    assert fine.filters == 6 and fine.kernel_size == (3, 3) and fine.strides == (1, 1)
    assert pool.pool_size == (4, 4)
    assert "fine_bn" not in {layer.name for layer in model.layers}
    assert model.get_layer("input_block_conv1").input.shape[-1] == 4 + 6
    assert "fine" not in {layer.name for layer in build_model(cfg).layers}
    # the same dark line in rows 17, 18 and 19 of a 64 px frame: one window of the 4x4 grid
    lines = np.full((3, 64, 64, 1), 0.6, np.float32)
    for i, row in enumerate((17, 18, 19)):
        lines[i, row, 8:56] = 0.1
    pooled = keras.Model(model.input, pool.output).predict(lines, verbose=0)
    np.testing.assert_allclose(pooled[0, 3:6, 3:12], pooled[1, 3:6, 3:12], rtol=1e-5, atol=1e-6)
    stem = keras.Model(model.input, model.get_layer("stem").output).predict(lines, verbose=0)
    assert np.abs(stem[0, 4, 3:12] - stem[2, 4, 3:12]).max() > 1e-3
    x = np.random.default_rng(0).random((1, 64, 128, 1)).astype(np.float32)
    assert model.predict(x, verbose=0).shape == (1, 64, 128, 1)


@needs_tensorflow
def test_a_fine_stride_of_2_runs_the_line_detector_at_half_resolution_and_still_sees_every_pixel():
    """model.fine_stride 2: the fine conv at stride 2, max-pooled by 2 to the stem's quarter
    resolution; a one-pixel line in any row of a window still reaches the pooled maps (its
    overlapping 3x3 windows leave no row unseen)."""
    import keras

    cfg = _model_cfg(architecture="tinyunet", base_filters=4, batch_norm=True, input_stride=4)
    model = build_model({**cfg, "fine_filters": 6, "fine_stride": 2})
    fine, pool = model.get_layer("fine"), model.get_layer("fine_pool")
    assert fine.strides == (2, 2) and fine.kernel_size == (3, 3) and pool.pool_size == (2, 2)
    assert model.get_layer("input_block_conv1").input.shape[-1] == 4 + 6
    # a darkness detector (fixed weights, so the test does not hang on a random draw): each
    # window's response rises when a dark pixel is in it, and the max-pool keeps the highest
    fine.set_weights([np.full((3, 3, 1, 6), -1.0, np.float32), np.full(6, 10.0, np.float32)])
    flat = np.full((1, 64, 64, 1), 0.6, np.float32)
    lines = np.repeat(flat, 4, axis=0)
    for i, row in enumerate((16, 17, 18, 19)):  # every row of the pooled map's row 4
        lines[i, row, 8:56] = 0.1
    pooled = keras.Model(model.input, pool.output)
    base = pooled.predict(flat, verbose=0)[0]
    got = pooled.predict(lines, verbose=0)
    for i in range(4):
        assert (got[i, 4, 3:12] > base[4, 3:12] + 1.0).all(), f"a line in row {16 + i} is not seen"
        np.testing.assert_allclose(got[i, 6:], base[6:])  # and nothing far from it moves
    x = np.random.default_rng(0).random((1, 64, 128, 1)).astype(np.float32)
    assert model.predict(x, verbose=0).shape == (1, 64, 128, 1)


@needs_tensorflow
def test_a_surface_window_gives_the_first_layer_each_pixels_departure_from_its_surroundings():
    """model.surface_window: beside the (standardized) image, the image less its mean over the
    4x4 cells of a window around each pixel, as numpy computes it; a dark blob on a bright
    surface and the same blob on a dark one read alike in it, where the image alone differs."""
    import keras

    cfg = _model_cfg(architecture="tinyunet", base_filters=4, batch_norm=True, input_stride=4)
    model = build_model({**cfg, "surface_window": 20})
    assert model.get_layer("stem").input.shape[-1] == 2
    assert "surface_concat" not in {layer.name for layer in build_model(cfg).layers}
    surface = keras.Model(model.input, model.get_layer("surface_concat").output)
    x = np.random.default_rng(0).random((1, 64, 96, 1)).astype(np.float32)
    got = surface.predict(x, verbose=0)
    np.testing.assert_array_equal(got[..., 0], x[..., 0])
    # numpy: 4x4 cell means, then each cell's mean over the 5x5 cells around it that lie in the
    # image, repeated back to 4x4 pixels
    cells = x[0, :, :, 0].reshape(16, 4, 24, 4).mean(axis=(1, 3))
    around = np.array(
        [[cells[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3].mean() for c in range(24)] for r in range(16)]
    )
    want = x[0, :, :, 0] - np.repeat(np.repeat(around, 4, axis=0), 4, axis=1)
    np.testing.assert_allclose(got[0, :, :, 1], want, atol=1e-5)
    # the same 8x8 dark blob on a bright and on a dark surface: the image differs by 0.5 there,
    # the departure at the blob's centre by far less
    bright, dark = np.full((1, 64, 64, 1), 0.8, np.float32), np.full((1, 64, 64, 1), 0.3, np.float32)
    for frame, level in ((bright, 0.8), (dark, 0.3)):
        frame[0, 28:36, 28:36] = level - 0.25
    both = surface.predict(np.concatenate([bright, dark]), verbose=0)
    assert abs(both[0, 32, 32, 1] - both[1, 32, 32, 1]) < 0.02
    assert both[0, 32, 32, 1] < -0.2 and both[0, 8, 8, 1] == pytest.approx(0.0, abs=1e-6)


@needs_tensorflow
def test_unet_lowered_filters():
    model = build_model(_model_cfg(architecture="unet_lowered", base_filters=16, dropout=0.5))
    filters = [layer.filters for layer in model.layers if layer.name.endswith("_conv1")]
    assert filters[:5] == [16, 32, 64, 128, 256]
    assert sum(layer.__class__.__name__ == "Dropout" for layer in model.layers) == 2


@needs_tensorflow
@pytest.mark.parametrize("instance_norm", [False, True])
def test_an_instance_norm_sees_each_image_alone_where_batchnorm_sees_the_batch(instance_norm):
    """model.instance_norm: in training, an image's map does not depend on what else is in the
    batch (each feature map is normalized over its own image); with BatchNorm it does."""
    cfg = {"architecture": "tinyunet", "base_filters": 4, "batch_norm": True, "instance_norm": instance_norm}
    model = build_model(_model_cfg(**cfg))
    norms = {layer.__class__.__name__ for layer in model.layers} & {
        "GroupNormalization",
        "BatchNormalization",
    }
    assert norms == {"GroupNormalization" if instance_norm else "BatchNormalization"}
    rng = np.random.default_rng(3)
    x = rng.random((3, 32, 32, 1)).astype(np.float32)
    x[1:] = x[1:] * 0.2 + 0.7  # two brighter, flatter images beside the first
    alone = model(x[:1], training=True).numpy()
    beside = model(x, training=True).numpy()[:1]
    difference = np.abs(alone - beside).max()
    if instance_norm:
        assert difference < 1e-4  # float round-off only
    else:
        assert difference > 1e-3, difference


@needs_tensorflow
@pytest.mark.parametrize("name", list(MODELS))
def test_model_builds_any_divisible_size_and_reloads(name, tmp_path):
    import keras

    model = build_model(_model_cfg(**MODELS[name]))
    for h, w in ((64, 64), (64, 96)):
        out = model.predict(np.zeros((1, h, w, 1), np.float32), verbose=0)
        assert out.shape == (1, h, w, 1) and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 1
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    x = np.random.default_rng(0).random((1, 64, 64, 1)).astype(np.float32)
    assert np.allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_model_trains_and_loss_goes_down(name):
    import keras

    from training.losses import bce_loss

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.05, (8, 32, 32, 1)).astype(np.float32)
    y = np.zeros_like(x)
    for i in range(8):
        r, c = rng.integers(4, 22, 2)
        x[i, r : r + 6, c : c + 6] = 0.1
        y[i, r : r + 6, c : c + 6] = 1
    model = build_model(_model_cfg(**MODELS[name]))
    model.compile(keras.optimizers.Adam(3e-3), loss=bce_loss)
    # built here, as train() builds it: slots made in fit's first trace make Keras trace it twice
    model.optimizer.build(model.trainable_variables)
    history = model.fit(x, y, batch_size=4, epochs=6, verbose=0, shuffle=False).history["loss"]
    # a few steps only: the loss must fall clearly, not converge
    assert history[-1] < 0.92 * history[0] and history[-1] < history[-2], history


def _mobilenet_weights(path):
    """A local MobileNetV2 (no top) weights file of the test's alpha, and the encoder it came from."""
    import keras

    encoder_base = keras.applications.MobileNetV2(
        input_shape=(None, None, 3),
        include_top=False,
        weights=None,
        alpha=MODELS["mobilenetv2_unet"]["alpha"],
    )
    encoder_base.save_weights(path)
    return path, encoder_base


@needs_tensorflow
def test_mobilenet_encoder_weights_from_a_local_file(tmp_path):
    cfg = MODELS["mobilenetv2_unet"]
    model = build_model(_model_cfg(**cfg))
    weights, encoder_base = _mobilenet_weights(tmp_path / "encoder.weights.h5")
    loaded = build_model(_model_cfg(**cfg, encoder_weights=str(weights)))
    encoder = loaded.get_layer("mobilenetv2_encoder")
    assert np.array_equal(
        encoder.get_layer("Conv1").get_weights()[0], encoder_base.get_layer("Conv1").get_weights()[0]
    )
    # layers before freeze_until are frozen, the rest train; without loaded weights nothing is
    # frozen (frozen random weights would never learn)
    assert not encoder.get_layer("block_1_expand").trainable and encoder.get_layer("block_6_expand").trainable
    assert model.get_layer("mobilenetv2_encoder").get_layer("block_1_expand").trainable
    assert model.count_params() == loaded.count_params()
    with pytest.raises(ModelError, match="does not exist"):
        build_model(_model_cfg(**cfg, encoder_weights=str(tmp_path / "missing.h5")))
    with pytest.raises(ModelError, match="not a MobileNetV2 layer"):
        build_model(_model_cfg(**cfg, freeze_until="block_99"))


def test_input_size_check_names_a_valid_size():
    check_input_size("tinyunet", 512, 496)
    with pytest.raises(ModelError, match="divisible by 16; got 500x512, try 496x512"):
        check_input_size("tinyunet", 500, 512)
    with pytest.raises(ModelError, match="divisible by 32"):
        check_input_size("mobilenetv2_unet", 1600, 240)


@needs_tensorflow
def test_mobilenet_honours_weight_decay(tmp_path):
    """optimizer.weight_decay reaches mobilenetv2_unet as it does the others: L2 on the trainable
    conv kernels of decoder and encoder, none on a frozen layer, none when it is 0."""
    weights, _ = _mobilenet_weights(tmp_path / "encoder.weights.h5")
    cfg = _model_cfg(**MODELS["mobilenetv2_unet"], encoder_weights=str(weights))
    assert build_model(cfg, weight_decay=0.0).losses == []
    model = build_model(cfg, weight_decay=1e-3)
    encoder = model.get_layer("mobilenetv2_encoder")
    assert model.get_layer("up_1_deconv").kernel.regularizer is not None
    assert model.get_layer("output_logits").kernel.regularizer is not None
    assert encoder.get_layer("block_16_project").kernel.regularizer is not None
    assert encoder.get_layer("block_13_depthwise").kernel.regularizer is not None
    assert encoder.get_layer("block_1_expand").kernel.regularizer is None  # frozen (before block_6_expand)
    decayed = [w for w in model.trainable_weights if w.regularizer is not None]
    assert len(model.losses) == len(decayed) > 10
    assert all(float(loss) > 0 for loss in model.losses)
