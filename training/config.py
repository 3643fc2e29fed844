"""Training recipes: the schema with its defaults, YAML loading, overrides and validation (no TensorFlow).

A recipe is a tree of dataclasses declared like the line config (converter/schema.py): each
field carries its default, its type and its rule, and the ``#:`` comment above it says what it
is for (docs/training-config.md is generated from them). The user's YAML is built over the
defaults; an unknown key, a value of the wrong type or outside its rule raises one
``ConfigError`` naming the file, the dotted key and the allowed values. Training reads the
result as a nested dict (``load_config``), the same dict that training.json records.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.overrides import parse_set, set_value
from converter.preprocessing import NORMALIZATIONS
from converter.schema import (
    ConfigError,
    Rule,
    build,
    choices,
    key,
    number,
    override_schema,
    read_yaml_mapping,
    show,
    text,
    text_rule,
    yes_no,
)
from training.losses import LOSS_NAMES as LOSSES
from training.models import model_stride

__all__ = ["ConfigError", "Recipe", "load_config", "parse_override", "without_unknown_keys"]

ARCHITECTURES = ("tinyunet", "unet_lowered", "mobilenetv2_unet", "lcnet_unet")
DATASET_KINDS = ("dagm", "severstal", "folders", "synthetic")
OPTIMIZERS = ("rmsprop", "adam")
SCHEDULES = ("exponential", "cosine")
STRATEGIES = ("default", "mirrored", "multi_worker")


def _is_classes(v: list[int]) -> bool:
    return bool(v) and all(c >= 1 for c in v)


def _is_image_size(v: int | list[int]) -> bool:
    size = [v, v] if isinstance(v, int) else v
    return len(size) == 2 and all(s >= 16 for s in size)


def augment(default: float, top: float) -> Any:
    """A camera-like augmentation strength: 0 (off) up to ``top``."""
    return number(default, ge=0, le=top, note="0: off")


@dataclass
class SyntheticSetConfig:
    """kind synthetic: the generated DAGM-like set (written under root when absent)."""

    #: training images per class
    n_train: int = number(200, ge=1)
    #: test images per class
    n_test: int = number(100, ge=1)
    #: image side in pixels
    size: int = number(512, ge=32, le=8192)
    #: fraction of images with a defect
    defect_fraction: float = number(0.5, ge=0, le=1)


@dataclass
class DatasetConfig:
    """The images and masks to train and score on."""

    #: dagm: DAGM2007 layout; severstal: train.csv + train_images/; folders: images/ + masks/;
    #: synthetic: a generated DAGM-like set
    kind: str = choices(*DATASET_KINDS, default="dagm")
    #: the data set's folder (kind synthetic: where the set is written)
    root: str = text("", empty="none; needed unless kind is synthetic")
    #: DAGM / synthetic: the class numbers (ClassN folders) to use
    classes: list[int] = field(
        default_factory=lambda: [1],
        metadata={"rule": Rule(_is_classes, "must be a non-empty list of class numbers >= 1")},
    )
    #: DAGM / synthetic: train only on images that have a defect (UNet_Industrial's default)
    only_defective_images: bool = yes_no(False)
    #: DAGM / synthetic: a Labels.txt that disagrees with the files is a warning, not an error
    lenient: bool = yes_no(False)
    #: Severstal and plain folders have no test split: this fraction of images trains
    train_fraction: float = number(0.85, gt=0, le=1)
    #: every image (and mask) is resized to this before cropping; null keeps the file's size
    image_size: int | list[int] | None = field(
        default=None,
        metadata={"rule": Rule(_is_image_size, "must be null, an int or [height, width] of ints >= 16")},
    )
    #: kind synthetic: the generated DAGM-like set
    synthetic: SyntheticSetConfig = field(default_factory=SyntheticSetConfig)


@dataclass
class AugmentConfig:
    """Random changes to each training crop, image and mask alike."""

    #: mirror left-right and up-down, each with probability 1/2
    flip: bool = yes_no(True)
    #: rotate by a random multiple of 90 degrees (square crops only)
    rot90: bool = yes_no(True)
    #: add up to +-this fraction of 255
    brightness: float = number(0.1, ge=0, le=1)
    #: scale the contrast by x(1 +- this)
    contrast: float = number(0.1, ge=0, le=1)
    #: what a camera adds (0: off): rotate by up to +-this many degrees
    rotate: float = augment(0.0, 45)
    #: zoom by x(1 +- this)
    scale: float = augment(0.0, 0.5)
    #: Gaussian blur with sigma up to this many pixels, on half the crops
    blur: float = augment(0.0, 10)
    #: gamma: the exponent x(1 + this)^+-1
    gamma: float = augment(0.0, 2)
    #: Gaussian noise with sigma up to this many gray levels
    noise: float = augment(0.0, 64)
    #: stuck sensor pixels: up to this share of a crop's pixels set to 255 or 0 (hot or dead)
    stuck_pixels: float = augment(0.0, 0.01)
    #: a camera's gain or exposure: multiply by (1 + this)^+-1 about black and clip at 255, as a
    #: sensor does, so that bright texture saturates into flat white
    gain: float = augment(0.0, 1)


@dataclass
class InputConfig:
    """What the model sees: scaling, crops, batches and augmentation."""

    #: pixel scaling, carried into the model package: zero_one maps 0..255 to 0..1,
    #: zero_centered to -1..1
    normalization: str = choices(*NORMALIZATIONS, default="zero_one")
    #: random square crops of this size for training, a multiple of the model's stride (16 for
    #: tinyunet and unet_lowered, times model.input_stride; 32 for mobilenetv2_unet); 0 trains on
    #: whole images
    crop: int = number(0, ge=0, note="0: whole images")
    #: fraction of training crops centred on a defect (0 = uniform random crops)
    defect_crop_fraction: float = number(0.5, ge=0, le=1)
    #: copy-paste augmentation (training/paste.py): this fraction of the crops that hold no
    #: defect get one of their class's labelled training defects pasted in, turned and flipped
    #: at random (0 = off)
    defect_paste_fraction: float = number(0.0, ge=0, le=1, note="0: no pasting")
    #: this fraction of those pastes are decoys: a piece of the crop's own texture in a label's
    #: shape, pasted the same way with no label, so that the paste's rim is no cue
    paste_decoy_fraction: float = number(0.0, ge=0, le=1)
    #: pseudo-defects (training/pseudo.py): this fraction of the crops that hold no defect get a
    #: generic anomaly drawn in and labelled: a noise-shaped region or a thin strip of the crop's
    #: own texture, turned, rescaled and changed in brightness, contrast, gamma or sharpness
    pseudo_defect_fraction: float = number(0.0, ge=0, le=1, note="0: none")
    #: hard-negative mining (training/mining.py): this fraction of the crops of clean training
    #: images is centred on the model's strongest false response (0 = off; needs input.crop)
    hard_negative_fraction: float = number(0.0, ge=0, le=1, note="0: no hard-negative mining")
    #: mining runs at the start of training and after every this-many epochs
    mining_every: int = number(2, ge=1)
    #: training images per step
    batch_size: int = number(8, ge=1)
    #: keep the decoded images in memory after the first epoch
    cache: bool = yes_no(True)
    #: random changes to each training crop, image and mask alike
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    """The network."""

    #: tinyunet: NVIDIA's TinyUNet; unet_lowered: a reduced U-Net; mobilenetv2_unet: a U-Net
    #: on a MobileNetV2 encoder; lcnet_unet: a U-Net on the pretrained backbone of PP-OCRv4's
    #: text detector (model.encoder_weights: ppocr)
    architecture: str = choices(*ARCHITECTURES, default="tinyunet")
    #: tinyunet: 32 is NVIDIA's tinyUNet (32-32-64-128, bottleneck 256)
    base_filters: int = number(32, ge=1)
    #: dropout rate in the network (0: none)
    dropout: float = number(0.0, ge=0, lt=1)
    #: tinyunet / unet_lowered: BatchNorm after each conv (not in the originals; much faster to converge)
    batch_norm: bool = yes_no(False)
    #: tinyunet / unet_lowered: with batch_norm, normalize each feature map over its own image
    #: (instance norm) instead of over the batch, so features read relative to the surface at hand
    instance_norm: bool = yes_no(False)
    #: standardize each input image in the model (zero mean, unit variance): the exported
    #: graph carries it, so the line needs nothing new; evens out gain and contrast
    standardize: bool = yes_no(False)
    #: tinyunet: dilation of the two bottleneck convs (1: NVIDIA's), a wider receptive field;
    #: 1 unless architecture is tinyunet
    bottleneck_dilation: int = number(1, ge=1)
    #: tinyunet: 2 or 4 starts with a conv of that size and stride (it sees every pixel) and
    #: runs the U-Net at that fraction of the resolution, the logits repeated back to full size
    #: at the end: about 2.5x the steps at 2 on a CPU, twice the receptive field; 1: NVIDIA's
    input_stride: int = number(1, ge=1)
    #: tinyunet with input_stride > 1: the stem conv's filters (0: base_filters); a 4x4 patch
    #: has 16 pixels, so 16 ReLU maps can keep only part of a thin line that crosses it
    stem_filters: int = number(0, ge=0)
    #: tinyunet with input_stride > 1: a full-resolution 3x3 conv of this many filters beside
    #: the stem, max-pooled to its resolution and joined to it (0: none), so that a thin line
    #: at any offset in a window lights a detector there
    fine_filters: int = number(0, ge=0)
    #: with fine_filters: that conv's stride, 1 (full resolution) or 2 (every pixel still seen
    #: by its overlapping 3x3 windows, a quarter of the maps to write, then max-pooled as at 1)
    fine_stride: int = number(1, ge=1)
    #: tinyunet: a window side in px, 4 times an odd number (60: 15 cells of 4x4 px); the first
    #: layer also sees each pixel less the surface's mean in that window around it (its
    #: departure from the surface at hand, in the exported graph too); 0: none
    surface_window: int = number(0, ge=0, note="0: none")
    #: mobilenetv2_unet: a local .weights.h5 / .h5 file of a MobileNetV2 encoder, or null (random);
    #: lcnet_unet: ppocr (rapidocr_onnxruntime 1.4.4's detector, fetched from PyPI once into
    #: ~/.cache/lineside), that wheel's .whl or its .onnx file, or null (the same network, random)
    encoder_weights: str | None = key(None, rule=text_rule())
    #: mobilenetv2_unet: the encoder's width multiplier
    alpha: float = number(1.0, gt=0)
    #: mobilenetv2_unet with encoder_weights: encoder layers whose name comes before this one
    #: stay frozen (null: none; without encoder_weights every layer trains)
    freeze_until: str | None = key("block_6_expand", rule=text_rule())
    #: lcnet_unet with encoder_weights: the trunk's layers up to its features at this stride
    #: (2, 4 or 8) stay as pretrained, for a faster step and so more epochs in a time budget
    #: (0: every layer trains)
    freeze_stride: int = number(0, ge=0, note="0: every layer trains")


@dataclass
class OptimizerConfig:
    """How the weights are updated."""

    #: rmsprop (UNet_Industrial's) or adam
    name: str = choices(*OPTIMIZERS, default="rmsprop")
    #: the learning rate at the start
    learning_rate: float = number(1e-4, gt=0)
    #: exponential: staircase lr * decay_rate ** (step // decay_steps) (UNet_Industrial);
    #: cosine: from learning_rate down to 0 over the whole run (train.epochs x steps_per_epoch)
    schedule: str = choices(*SCHEDULES, default="exponential")
    #: exponential only; decay_steps 0 keeps the learning rate constant
    decay_steps: int = number(500, ge=0, note="0: constant")
    #: exponential: the factor applied every decay_steps
    decay_rate: float = number(0.8, gt=0, le=1)
    #: rmsprop: the discounting factor of the squared-gradient average
    rho: float = number(0.9, ge=0, lt=1)
    #: rmsprop: momentum
    momentum: float = number(0.8, ge=0, lt=1)
    #: rmsprop: normalize by the gradient's estimated variance
    centered: bool = yes_no(True)
    #: L2 on the conv kernels, added to the loss as UNet_Industrial does
    weight_decay: float = number(1e-5, ge=0)


@dataclass
class TrainConfig:
    """The run."""

    #: epochs to train; a finished run given more epochs resumes
    epochs: int = number(10, ge=1)
    #: batches per epoch
    steps_per_epoch: int = number(100, ge=1)
    #: where model.keras, training.json, checkpoints and logs go
    output_dir: str = text("runs/recipe")
    #: mixed_float16 compute (GPUs)
    mixed_precision: bool = yes_no(False)
    #: tf.distribute strategy: default (one device), mirrored (the GPUs of this box), multi_worker
    strategy: str = choices(*STRATEGIES, default="default")
    #: write TensorBoard logs (when TensorBoard is installed)
    tensorboard: bool = yes_no(True)
    #: deterministic ops and one inter-op thread: the same seed gives the same model
    deterministic: bool = yes_no(True)
    #: a progress bar per epoch (running loss and Dice)
    progress: bool = yes_no(True)
    #: stop at the end of the first epoch that passes this many minutes of training (0: no limit)
    max_minutes: float = number(0.0, ge=0, note="0: no limit")


@dataclass
class EvalConfig:
    """How the model is scored after training, and the decision rule the package gets."""

    #: a pixel is a defect above this score
    threshold: float = number(0.5, ge=0, le=1)
    #: defect regions smaller than this (pixels) are ignored
    min_defect_area: int = number(16, ge=0)
    #: the line draws its defect mask at this score: the regions above it that touch a region the
    #: decision kept (converter/regions.mask_regions); the decision itself stays at threshold.
    #: null: calibration chooses the candidate with the best held-out Dice of that mask (without
    #: calibration, threshold)
    mask_threshold: float | None = number(None, gt=0, lt=1, note="null: calibrated, else threshold")
    #: hold this fraction of the training images out to choose threshold and min_defect_area
    #: after training (training.calibrate); 0 keeps the two values above
    calibration_fraction: float = number(0.0, ge=0, le=0.5, note="0: none")
    #: calibration chooses the rule that catches the most held-out defects among those whose
    #: held-out TNR is at least this (training.calibrate); below it the summary warns
    min_tnr: float = number(0.98, ge=0, le=1, note="e.g. 0.98")
    #: the TNR floor must also hold on up to this many clean training images (chosen at random):
    #: the model trained on them, so they can only tighten the rule, and they are several times
    #: the held-out clean images (docs/training.md, Calibration)
    tnr_training_images: int = number(1000, ge=0, note="0: off")
    #: images per prediction batch
    batch_size: int = number(4, ge=1)
    #: score at most this many images (0: all)
    max_images: int = number(0, ge=0, note="0: all")


@dataclass
class Recipe:
    """A training recipe: every key it may set, with its default."""

    #: the run's name: recorded in training.json, and the model id of the package exported from it
    name: str = text("recipe")
    #: seeds Python, NumPy and TensorFlow (data order, crops, augmentation, initial weights)
    seed: int = number(0, ge=0)
    #: the images and masks to train and score on
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    #: what the model sees: scaling, crops, batches and augmentation
    input: InputConfig = field(default_factory=InputConfig)
    #: the network
    model: ModelConfig = field(default_factory=ModelConfig)
    #: segmentation loss (training/losses.py); adaptive: BCE while the Dice loss is >= 0.3, then Dice
    loss: str = choices(*LOSSES, default="adaptive")
    #: how the weights are updated
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    #: the run
    train: TrainConfig = field(default_factory=TrainConfig)
    #: how the model is scored after training, and the decision rule the package gets
    eval: EvalConfig = field(default_factory=EvalConfig)


#: every key with its default, as the nested dict training reads
DEFAULTS: dict[str, Any] = dataclasses.asdict(Recipe())


def _check_recipe(recipe: Recipe, source: str) -> None:
    """What no single key's rule can say: keys that depend on each other."""

    def bad(key: str, value: Any, rule: str) -> ConfigError:
        return ConfigError(f"{source}: {key} is {show(value)}; {rule}")

    size = recipe.dataset.image_size
    if isinstance(size, int):
        recipe.dataset.image_size = [size, size]
    if recipe.input.hard_negative_fraction and not recipe.input.crop:
        raise bad(
            "input.hard_negative_fraction",
            recipe.input.hard_negative_fraction,
            "must be 0 when input.crop is 0 (whole images: no crop to aim)",
        )
    model = recipe.model
    # options of ours that only the tinyunet builder takes, at the value that means "off"
    for name, off in (("bottleneck_dilation", 1), ("input_stride", 1), ("surface_window", 0)):
        if getattr(model, name) != off and model.architecture != "tinyunet":
            raise bad(
                f"model.{name}", getattr(model, name), f"must be {off} unless model.architecture is tinyunet"
            )
    if model.instance_norm and (not model.batch_norm or model.architecture == "mobilenetv2_unet"):
        raise bad(
            "model.instance_norm",
            model.instance_norm,
            "needs model.batch_norm: true (it takes BatchNorm's place) and tinyunet or unet_lowered",
        )
    if model.freeze_stride not in (0, 2, 4, 8):
        raise bad("model.freeze_stride", model.freeze_stride, "must be 0, 2, 4 or 8")
    if model.freeze_stride and model.architecture != "lcnet_unet":
        raise bad(
            "model.freeze_stride",
            model.freeze_stride,
            "must be 0 unless model.architecture is lcnet_unet (mobilenetv2_unet: model.freeze_until)",
        )
    if model.encoder_weights is not None and model.architecture not in ("mobilenetv2_unet", "lcnet_unet"):
        # a pretrained encoder that the network has none of would be dropped without a word
        raise bad(
            "model.encoder_weights",
            model.encoder_weights,
            "must be null unless model.architecture is mobilenetv2_unet or lcnet_unet",
        )
    if model.input_stride not in (1, 2, 4):
        raise bad("model.input_stride", model.input_stride, "must be 1, 2 or 4")
    for name, why in (
        ("stem_filters", "there is no stem at 1"),
        ("fine_filters", "at 1 the network is at full resolution already"),
    ):
        if getattr(model, name) and model.input_stride == 1:
            raise bad(f"model.{name}", getattr(model, name), f"needs model.input_stride 2 or 4 ({why})")
    if model.fine_stride not in (1, 2):
        raise bad("model.fine_stride", model.fine_stride, "must be 1 or 2")
    if model.fine_stride == 2 and not (model.fine_filters and model.input_stride == 4):
        raise bad(
            "model.fine_stride",
            model.fine_stride,
            "needs model.fine_filters > 0 and model.input_stride 4 (at 2 nothing is left to max-pool)",
        )
    window = model.surface_window
    if window and (window % 4 or window // 4 % 2 == 0):
        odd = window // 4 - (1 - window // 4 % 2)  # the odd number of cells at or under window/4
        tries = " or ".join(str(4 * c) for c in (odd, odd + 2) if c > 0)
        raise bad(
            "model.surface_window",
            window,
            f"must be 0 or 4 times an odd number (its mean is over 4x4 cells, centred); try {tries}",
        )
    # a crop the model cannot take would otherwise fail only after the data set has loaded
    crop, stride = recipe.input.crop, model_stride(model.architecture, model.input_stride)
    if crop % stride:
        below = crop // stride * stride
        tries = " or ".join(str(v) for v in (below, below + stride) if v)
        raise bad(
            "input.crop",
            crop,
            f"must divide by {stride} ({model.architecture} at model.input_stride {model.input_stride});"
            f" try {tries}",
        )
    if recipe.dataset.kind != "synthetic" and not recipe.dataset.root:
        raise bad("dataset.root", "", f"must be the folder of the {recipe.dataset.kind} data set")


def load_config(
    config: dict[str, Any] | str | Path | None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A recipe (YAML path or dict) with dotted ``overrides`` built over the defaults, validated,
    as the nested dict training reads."""
    source = "recipe"
    if config is None:
        user: dict[str, Any] = {}
    elif isinstance(config, dict):
        user = copy.deepcopy(config)
    else:
        source = str(config)
        user = read_yaml_mapping(config, what="recipe", example="configs/train/demo.yaml")
    schema = override_schema(Recipe)
    for dotted, value in (overrides or {}).items():
        set_value(user, dotted, value, schema, error=ConfigError)
    recipe = build(Recipe, user, source)
    _check_recipe(recipe, source)
    return dataclasses.asdict(recipe)


def without_unknown_keys(recorded: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A recipe that a run recorded (its recipe.json), less the keys this lineside does not have,
    and the dotted names of those keys.

    A run trained by another lineside version may record a key that was removed since.
    Scoring the run needs its data set and its decision, not that key, so the caller names
    the key in a warning and goes on, rather than refusing a model that it can score.
    """
    dropped: list[str] = []

    def keep(data: dict[str, Any], schema: dict[str, Any], prefix: str) -> dict[str, Any]:
        kept = {}
        for name, value in data.items():
            if name not in schema:
                dropped.append(prefix + str(name))
            elif isinstance(schema[name], dict) and isinstance(value, dict):
                kept[name] = keep(value, schema[name], f"{prefix}{name}.")
            else:
                kept[name] = value
        return kept

    return keep(recorded, override_schema(Recipe), ""), dropped


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` or ``list[0]=value`` from the command line; the value is parsed as YAML
    (so 3, 0.5, true, [1,2], null). The one ``--set`` parser of every command (converter/overrides.py)."""
    return parse_set(text, error=ConfigError)
