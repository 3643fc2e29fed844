"""The three U-Nets of the seeds, built from built-in Keras layers only.

Only built-in layers are used so ``keras.models.load_model(path, compile=False)``
loads a checkpoint without importing ``training`` (the converter relies on it).
Spatial dimensions are ``None``: a model trains on random crops and exports at the
full image size, as long as each side divides by ``model_stride(architecture)``.
Every model returns a 1-channel sigmoid map, NHWC, in float32 even under mixed precision.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from converter.errors import LinesideError

logger = logging.getLogger(__name__)

#: how many times each architecture halves the image; input sides must divide by this
MODEL_STRIDES = {"tinyunet": 16, "unet_lowered": 16, "mobilenetv2_unet": 32, "lcnet_unet": 16}


class ModelError(LinesideError, ValueError):
    """A model option (architecture, input size, weights file) is invalid."""


def model_stride(architecture: str, input_stride: int = 1) -> int:
    """The number every input side must divide by for ``architecture`` (with a stem of
    ``input_stride``, ``model.input_stride``)."""
    if architecture not in MODEL_STRIDES:
        msg = f"unknown architecture {architecture!r}; allowed: {', '.join(MODEL_STRIDES)}"
        raise ModelError(msg)
    return MODEL_STRIDES[architecture] * input_stride


def check_input_size(architecture: str, height: int, width: int, input_stride: int = 1) -> None:
    """Raise a ModelError naming the size and the nearest valid one when it does not divide."""
    stride = model_stride(architecture, input_stride)
    if height % stride or width % stride:
        fix = f"{max(stride, round(height / stride) * stride)}x{max(stride, round(width / stride) * stride)}"
        msg = f"{architecture} needs input sides divisible by {stride}; got {height}x{width}, try {fix}"
        raise ModelError(msg)


def check_model_input(model_cfg: dict[str, Any], height: int, width: int) -> None:
    """``check_input_size`` for a recipe's ``model`` section (a run's recorded one may predate
    ``input_stride``)."""
    check_input_size(model_cfg["architecture"], height, width, model_cfg.get("input_stride", 1))


def _conv(
    keras: Any,
    filters: int,
    kernel: int,
    name: str,
    weight_decay: float,
    activation: str | None = "relu",
    batch_norm: bool | str = False,
    dilation: int = 1,
    strides: int = 1,
):
    """Conv2D 'same' + ReLU, or Conv2D + BatchNorm + ReLU when ``batch_norm`` (converges far
    faster); ``batch_norm="instance"`` normalizes each feature map over its own image instead
    (``model.instance_norm``)."""
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    use_bn = batch_norm and activation is not None
    conv = keras.layers.Conv2D(
        filters,
        kernel,
        padding="same",
        activation=None if use_bn else activation,
        use_bias=not use_bn,
        kernel_initializer="he_normal",
        kernel_regularizer=reg,
        dilation_rate=dilation,
        strides=strides,
        name=name,
    )
    if not use_bn:
        return conv
    if batch_norm == "instance":
        # one group per channel: each map's mean and spread over the image itself, so a feature
        # reads as its departure from this surface's usual, the same in training and on the line
        bn = keras.layers.GroupNormalization(groups=-1, epsilon=1e-3, name=f"{name}_in")
    else:
        # momentum 0.9: short CPU runs otherwise evaluate with half-initialized moving statistics
        bn = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")
    act = keras.layers.Activation(activation, name=f"{name}_{activation}")
    return lambda x: act(bn(conv(x)))


#: the floor of the per-image variance (inputs in [0, 1]): a flat frame's sensor noise is
#: magnified at most 100 times instead of without bound
STANDARDIZE_EPSILON = 1e-4


def _model_input(keras: Any, channels: int, standardize: bool):
    """The model's input, and what the first layer sees: the input itself, or each image
    standardized to zero mean and unit variance over its pixels (``model.standardize``).
    LayerNormalization over (H, W, C) without scale or centre is exactly that, a built-in
    layer, and it travels in the exported graph, so the line's preprocessing stays the same."""
    inputs = keras.Input((None, None, channels), name="image")
    if not standardize:
        return inputs, inputs
    norm = keras.layers.LayerNormalization(
        axis=[1, 2, 3], center=False, scale=False, epsilon=STANDARDIZE_EPSILON, name="standardize"
    )
    return inputs, norm(inputs)


#: the side of the cells the surface's mean is taken over (``_with_surface_departure``)
SURFACE_CELL = 4


def _with_surface_departure(keras: Any, x: Any, window: int):
    """``x`` and beside it each pixel's departure from the surface around it: ``x`` less its
    mean over about a ``window`` x ``window`` square (``model.surface_window``), so a dark blob
    on a bright surface reads as dark whatever the surface's level, and a texture's own grain
    stays near 0 once the window holds many grains. The mean is taken over 4x4 cells (a 4x4
    average pool, a box of window/4 cells, repeated back to full size): at full resolution the
    box took 1.3x the recipe's step on a CPU, and a mean over many cells barely moves from one
    cell to the next. Built-in layers only; 'same' padding counts only the cells inside the
    image, in Keras and in ONNX's AveragePool alike."""
    cells = window // SURFACE_CELL
    mean = keras.layers.AveragePooling2D(SURFACE_CELL, name="surface_cells")(x)
    mean = keras.layers.AveragePooling2D((1, cells), strides=1, padding="same", name="surface_mean_w")(mean)
    mean = keras.layers.AveragePooling2D((cells, 1), strides=1, padding="same", name="surface_mean_h")(mean)
    mean = keras.layers.UpSampling2D(SURFACE_CELL, interpolation="nearest", name="surface_mean")(mean)
    departure = keras.layers.Subtract(name="surface_departure")([x, mean])
    return keras.layers.Concatenate(name="surface_concat")([x, departure])


def _sigmoid_output(keras: Any, x: Any):
    # float32 so the probabilities (and the loss) stay exact under mixed_float16
    return keras.layers.Activation("sigmoid", dtype="float32", name="probabilities")(x)


def build_tinyunet(
    channels: int = 1,
    base_filters: int = 32,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    batch_norm: bool | str = False,
    standardize: bool = False,
    bottleneck_dilation: int = 1,
    input_stride: int = 1,
    stem_filters: int = 0,
    fine_filters: int = 0,
    fine_stride: int = 1,
    surface_window: int = 0,
):
    """TinyUNet of NVIDIA UNet_Industrial.

    Input block (2 conv) -> 3 down blocks (2 conv + 2x2 max-pool) with base, 2*base,
    4*base filters -> bottleneck (2 conv at 8*base, nearest 2x upsample + 2x2 conv)
    -> 3 up blocks (concat skip, conv f, conv f/2, upsample + 2x2 conv f/2) -> output
    block (concat, 2 conv at base, 1x1 conv) -> sigmoid. ReLU, 'same' padding.
    base_filters=32 is NVIDIA's tinyUNet. ``batch_norm`` (not in NVIDIA's model) puts
    BatchNorm after every 3x3 conv; it folds into the convs at export (``"instance"``: an
    instance norm, ``model.instance_norm``, which stays a layer of its own). ``standardize``
    (see ``_model_input``) and ``bottleneck_dilation`` > 1 (the bottleneck's two convs see
    that much wider, for defects larger than NVIDIA's receptive field) are options of ours.
    So is ``input_stride`` > 1: a ``stem`` conv of that size and stride (each pixel seen once,
    so a 1 px scratch still reaches the network) runs the whole U-Net at 1/input_stride of
    the resolution, and the logits are repeated back to full size. On a CPU the full-size
    convs with few channels cost most of the time for little arithmetic; weak (elliptical)
    labels need no full-resolution output. Nearest, not bilinear: Keras' bilinear
    UpSampling2D fails on inputs of unknown size. ``stem_filters`` (0: ``base_filters``) widens
    that stem alone. ``fine_filters`` > 0 adds a full-resolution 3x3 conv beside the stem whose
    ReLU maps are max-pooled to the stem's resolution and joined to its output: a thin line
    anywhere in a stride x stride window, at any offset, still lights its detector there,
    which one linear window of the stem sees only at the offsets its filters learned.
    ``fine_stride`` 2 runs that conv at stride 2 (its 3x3 windows still overlap, so every
    pixel is seen) and max-pools what is left: a quarter of its full-resolution maps to write.
    ``surface_window`` > 0 gives the first layer each pixel's departure from its surroundings
    beside the image (``_with_surface_departure``).
    """
    import keras

    b = base_filters
    inputs, x = _model_input(keras, channels, standardize)
    if surface_window:
        x = _with_surface_departure(keras, x, surface_window)
    if input_stride > 1:
        stem = _conv(
            keras,
            stem_filters or b,
            input_stride,
            "stem",
            weight_decay,
            batch_norm=batch_norm,
            strides=input_stride,
        )
        if fine_filters:
            # a max-pool to the stem's resolution, not a larger stride: the line detector's
            # strongest response in each window survives (fine_stride 2 only halves the pool).
            # No norm: its input is the image (standardized when asked), and a norm at full
            # resolution doubled a CPU step's time where the conv alone adds 3-7 %
            fine = _conv(keras, fine_filters, 3, "fine", weight_decay, strides=fine_stride)(x)
            fine = keras.layers.MaxPooling2D(input_stride // fine_stride, name="fine_pool")(fine)
            x = keras.layers.Concatenate(name="stem_concat")([stem(x), fine])
        else:
            x = stem(x)
    skips = []
    for name, filters in (("input_block", b), ("down_1", b), ("down_2", 2 * b), ("down_3", 4 * b)):
        x = _conv(keras, filters, 3, f"{name}_conv1", weight_decay, batch_norm=batch_norm)(x)
        x = _conv(keras, filters, 3, f"{name}_conv2", weight_decay, batch_norm=batch_norm)(x)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    d = bottleneck_dilation
    x = _conv(keras, 8 * b, 3, "bottleneck_conv1", weight_decay, batch_norm=batch_norm, dilation=d)(x)
    x = _conv(keras, 8 * b, 3, "bottleneck_conv2", weight_decay, batch_norm=batch_norm, dilation=d)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name="bottleneck_upsample")(x)
    x = _conv(keras, 4 * b, 2, "bottleneck_upconv", weight_decay, batch_norm=batch_norm)(x)
    for i, filters in enumerate((4 * b, 2 * b, b), start=1):
        x = keras.layers.Concatenate(name=f"up_{i}_concat")([x, skips.pop()])
        x = _conv(keras, filters, 3, f"up_{i}_conv1", weight_decay, batch_norm=batch_norm)(x)
        x = _conv(keras, filters // 2, 3, f"up_{i}_conv2", weight_decay, batch_norm=batch_norm)(x)
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up_{i}_upsample")(x)
        x = _conv(keras, filters // 2, 2, f"up_{i}_upconv", weight_decay, batch_norm=batch_norm)(x)
    x = keras.layers.Concatenate(name="output_concat")([x, skips.pop()])
    x = _conv(keras, b, 3, "output_conv1", weight_decay, batch_norm=batch_norm)(x)
    x = _conv(keras, b, 3, "output_conv2", weight_decay, batch_norm=batch_norm)(x)
    x = _conv(keras, 1, 1, "output_logits", weight_decay, activation=None)(x)
    if input_stride > 1:
        x = keras.layers.UpSampling2D(input_stride, interpolation="nearest", name="output_upsample")(x)
    return keras.Model(inputs, _sigmoid_output(keras, x), name="tinyunet")


def build_unet_lowered(
    channels: int = 1,
    base_filters: int = 16,
    weight_decay: float = 0.0,
    dropout: float = 0.5,
    batch_norm: bool = False,
    standardize: bool = False,
):
    """The reduced U-Net of the "U-Net lowered" seed: the classic Keras U-Net at 25% filters.

    Filters 16-32-64-128-256 (base_filters=16), 2 ReLU convs per level, dropout on the
    last encoder level and the bottleneck, decoder = 2x upsample + 2x2 conv, concat,
    2 convs; a 1x1 sigmoid output.
    """
    import keras

    f = [base_filters * 2**i for i in range(5)]
    inputs, x = _model_input(keras, channels, standardize)
    skips = []
    for level in range(4):
        x = _conv(keras, f[level], 3, f"enc{level + 1}_conv1", weight_decay, batch_norm=batch_norm)(x)
        x = _conv(keras, f[level], 3, f"enc{level + 1}_conv2", weight_decay, batch_norm=batch_norm)(x)
        if level == 3 and dropout:
            x = keras.layers.Dropout(dropout, name="enc4_dropout")(x)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{level + 1}_pool")(x)
    x = _conv(keras, f[4], 3, "bottleneck_conv1", weight_decay, batch_norm=batch_norm)(x)
    x = _conv(keras, f[4], 3, "bottleneck_conv2", weight_decay, batch_norm=batch_norm)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(4)):
        x = keras.layers.UpSampling2D(2, name=f"dec{level + 1}_upsample")(x)
        x = _conv(keras, f[level], 2, f"dec{level + 1}_upconv", weight_decay, batch_norm=batch_norm)(x)
        x = keras.layers.Concatenate(name=f"dec{level + 1}_concat")([skips[level], x])
        x = _conv(keras, f[level], 3, f"dec{level + 1}_conv1", weight_decay, batch_norm=batch_norm)(x)
        x = _conv(keras, f[level], 3, f"dec{level + 1}_conv2", weight_decay, batch_norm=batch_norm)(x)
    x = _conv(keras, 1, 1, "output_logits", weight_decay, activation=None)(x)
    return keras.Model(inputs, _sigmoid_output(keras, x), name="unet_lowered")


#: MobileNetV2 activations used as skips, at 1/2, 1/4, 1/8, 1/16 of the input, then the 1/32 bottleneck
_MOBILENET_SKIPS = (
    "block_1_expand_relu",
    "block_3_expand_relu",
    "block_6_expand_relu",
    "block_13_expand_relu",
)
_MOBILENET_BOTTOM = "block_16_project"


def build_mobilenetv2_unet(
    channels: int = 1,
    base_filters: int = 32,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    encoder_weights: str | Path | None = None,
    alpha: float = 1.0,
    freeze_until: str | None = "block_6_expand",
    standardize: bool = False,
):
    """A MobileNetV2 encoder with pix2pix upsample blocks (TensorFlow's segmentation tutorial shape).

    Decoder blocks are Conv2DTranspose(3x3, stride 2) + BatchNorm (+ Dropout) + ReLU with
    16, 8, 4, 2 x base_filters filters (base 32 gives the tutorial's 512-256-128-64).
    Grayscale input is repeated to the 3 channels MobileNetV2 expects. Encoder weights
    come only from ``encoder_weights`` (a local file); otherwise they start random:
    nothing is downloaded. Encoder layers before ``freeze_until`` are frozen when weights
    were loaded (random weights, frozen, would stay random).
    ``weight_decay`` puts L2 on every trainable conv kernel, the decoder's and the encoder's
    (as the other architectures do on theirs); frozen layers have nothing to decay.
    """
    import keras

    if channels not in (1, 3):
        msg = f"mobilenetv2_unet takes 1 or 3 input channels, got {channels}"
        raise ModelError(msg)
    inputs, x = _model_input(keras, channels, standardize)
    rgb = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x]) if channels == 1 else x
    encoder_base = keras.applications.MobileNetV2(
        input_shape=(None, None, 3), include_top=False, weights=None, alpha=alpha
    )
    if encoder_weights is not None:
        path = Path(encoder_weights)
        if not path.is_file():
            msg = (
                f"model.encoder_weights {path} does not exist; give a local MobileNetV2 weights file or null"
            )
            raise ModelError(msg)
        try:
            encoder_base.load_weights(str(path), skip_mismatch=False)
        except Exception as exc:  # Keras raises several types for a wrong file
            msg = f"model.encoder_weights {path} does not fit MobileNetV2(alpha={alpha}, no top): {exc}"
            raise ModelError(msg) from None
        logger.info("MobileNetV2 encoder weights loaded from %s", path)
    outputs = [encoder_base.get_layer(n).output for n in (*_MOBILENET_SKIPS, _MOBILENET_BOTTOM)]
    encoder = keras.Model(encoder_base.input, outputs, name="mobilenetv2_encoder")
    if freeze_until is not None:
        names = [layer.name for layer in encoder.layers]
        if freeze_until not in names:
            msg = (
                f"model.freeze_until {freeze_until!r} is not a MobileNetV2 layer, e.g. block_6_expand or null"
            )
            raise ModelError(msg)
        if encoder_weights is None:
            # Frozen random weights would stay random: with nothing loaded, every layer trains.
            logger.info("no MobileNetV2 encoder weights: model.freeze_until ignored, every layer trains")
        else:
            for layer in encoder.layers[: names.index(freeze_until)]:
                layer.trainable = False
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    if reg is not None:
        # keras.applications takes no regularizer and the encoder is already built: Keras 3
        # adds a variable's ``regularizer`` to the model's losses (Layer._get_regularization_losses)
        for layer in encoder.layers:
            kernel = getattr(layer, "kernel", None)  # Conv2D and DepthwiseConv2D
            if kernel is not None and layer.trainable:
                kernel.regularizer = reg
    *skips, x = encoder(rgb)
    for i, (filters, skip) in enumerate(zip((16, 8, 4, 2), reversed(skips), strict=True), start=1):
        x = keras.layers.Conv2DTranspose(
            filters * base_filters,
            3,
            strides=2,
            padding="same",
            use_bias=False,
            kernel_regularizer=reg,
            name=f"up_{i}_deconv",
        )(x)
        x = keras.layers.BatchNormalization(name=f"up_{i}_bn")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"up_{i}_dropout")(x)
        x = keras.layers.ReLU(name=f"up_{i}_relu")(x)
        x = keras.layers.Concatenate(name=f"up_{i}_concat")([x, skip])
    x = keras.layers.Conv2DTranspose(
        1, 3, strides=2, padding="same", kernel_regularizer=reg, name="output_logits"
    )(x)
    return keras.Model(inputs, _sigmoid_output(keras, x), name="mobilenetv2_unet")


def build_lcnet_unet(
    channels: int = 1,
    base_filters: int = 16,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    batch_norm: bool = True,
    encoder_weights: str | Path | None = "ppocr",
    standardize: bool = True,
    freeze_stride: int = 0,
):
    """A U-Net on the backbone of PP-OCRv4's text detector (``training/pretrained.py``): its
    features at strides 16, 8 and 4, joined on the way up (each level repeated to twice its
    size, then a 3x3 conv of 4 and 2 x ``base_filters``); the logits at stride 4, repeated
    back to full size, as the recipe's stem-4 TinyUNet does. (Keras's bilinear upsampling
    needs static sides, and a model must take any size that divides by 16.) A level at
    stride 2 cost 1.15x the step and is left out.

    The image goes in as the detector's was trained: three ImageNet-normalized channels. A
    fixed 1x1 conv maps a gray image in [0, 1] there (a standardized one first to 0.45 +
    0.2 z, a photograph's usual level and spread). ``encoder_weights`` is ``ppocr`` (the file
    the rapidocr_onnxruntime wheel ships) or a path to it; null builds the same network with
    Keras's initial weights, the control that tells the pretraining's part from the shape's.
    ``weight_decay`` reaches the decoder's convs only (the recipe's is 0). ``freeze_stride``
    (2, 4 or 8) keeps the trunk's layers up to its features at that stride as loaded: the
    early layers run at the largest sizes, so their backward pass is a large share of a step
    (at 4: 32-33 s an epoch of the recipe's against 36-37 s), and what they compute (edges,
    strokes) is the most general part of the pretraining.
    """
    import keras
    import numpy as np

    from training.pretrained import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        PPOCR_WEIGHTS,
        build_trunk,
        ppocr_weights_path,
    )

    if channels not in (1, 3):
        msg = f"lcnet_unet takes 1 or 3 input channels, got {channels}"
        raise ModelError(msg)
    path = ppocr_weights_path(encoder_weights if encoder_weights is not None else PPOCR_WEIGHTS)
    inputs, x = _model_input(keras, channels, standardize)
    gain, offset = (0.2, 0.45) if standardize else (1.0, 0.0)
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    to_encoder = keras.layers.Conv2D(3, 1, name="encoder_input", trainable=False)
    rgb = to_encoder(x)
    kernel = np.zeros((1, 1, channels, 3), np.float32)
    for c in range(3):
        kernel[0, 0, 0 if channels == 1 else c, c] = gain / std[c]
    to_encoder.set_weights([kernel, (offset - mean) / std])
    feats = build_trunk(keras, path, rgb, load_weights=encoder_weights is not None)
    if encoder_weights is not None:
        logger.info("lcnet_unet encoder weights loaded from %s", path)
    else:
        logger.info("lcnet_unet starts from Keras's initial weights (encoder_weights: ppocr loads them)")
    if freeze_stride and encoder_weights is None:
        # frozen random weights would stay random: with nothing loaded, every layer trains
        logger.info("no lcnet_unet encoder weights: model.freeze_stride ignored, every layer trains")
    elif freeze_stride:
        # the layers between the input and the features at that stride, shared with the model
        keras.Model(inputs, feats[freeze_stride]).trainable = False
    x = feats[16]
    for stride, filters in ((8, 4), (4, 2)):
        x = keras.layers.UpSampling2D(2, name=f"up_{stride}_repeat")(x)
        x = keras.layers.Concatenate(name=f"up_{stride}_concat")([x, feats[stride]])
        x = _conv(keras, filters * base_filters, 3, f"up_{stride}_conv", weight_decay, batch_norm=batch_norm)(
            x
        )
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"up_{stride}_dropout")(x)
    x = keras.layers.Conv2D(1, 1, name="output_logits")(x)
    x = keras.layers.UpSampling2D(4, name="output_repeat")(x)
    return keras.Model(inputs, _sigmoid_output(keras, x), name="lcnet_unet")


def build_model(model_cfg: dict[str, Any], channels: int = 1, weight_decay: float = 0.0):
    """Build the architecture a recipe's ``model`` section names."""
    arch = model_cfg["architecture"]
    model_stride(arch)
    common = (
        channels,
        model_cfg["base_filters"],
        weight_decay,
        model_cfg["dropout"],
        "instance" if model_cfg.get("instance_norm") else model_cfg["batch_norm"],
    )
    if arch == "tinyunet":
        return build_tinyunet(
            *common,
            model_cfg["standardize"],
            model_cfg["bottleneck_dilation"],
            model_cfg.get("input_stride", 1),
            model_cfg.get("stem_filters", 0),
            model_cfg.get("fine_filters", 0),
            model_cfg.get("fine_stride", 1),
            model_cfg.get("surface_window", 0),
        )
    if arch == "unet_lowered":
        return build_unet_lowered(*common, model_cfg["standardize"])
    if arch == "lcnet_unet":
        return build_lcnet_unet(
            *common, model_cfg["encoder_weights"], model_cfg["standardize"], model_cfg.get("freeze_stride", 0)
        )
    return build_mobilenetv2_unet(
        channels,
        model_cfg["base_filters"],
        weight_decay,
        model_cfg["dropout"],
        model_cfg["encoder_weights"],
        model_cfg["alpha"],
        model_cfg["freeze_until"],
        model_cfg["standardize"],
    )
