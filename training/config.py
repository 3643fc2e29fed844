"""Training recipes: defaults, YAML loading, overrides and validation (no TensorFlow).

A recipe is a nested dict. The user's YAML is merged over ``DEFAULTS``; a key
that is not in ``DEFAULTS`` or a value of the wrong type or outside ``CHOICES``
raises one ``ConfigError`` naming the file, the dotted key and the allowed values.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from converter.errors import LinesideError
from converter.overrides import did_you_mean, parse_set, set_value
from converter.preprocessing import NORMALIZATIONS

ARCHITECTURES = ("tinyunet", "unet_lowered", "mobilenetv2_unet")
DATASET_KINDS = ("dagm", "severstal", "folders", "synthetic")
LOSSES = ("bce", "dice", "adaptive", "bce_dice", "tversky", "bce_tversky")
OPTIMIZERS = ("rmsprop", "adam")
SCHEDULES = ("exponential", "cosine")
STRATEGIES = ("default", "mirrored", "multi_worker")

#: Every key a recipe may set, with its default. ``None`` defaults take the type in ``_NULLABLE``.
DEFAULTS: dict[str, Any] = {
    # the run's name: recorded in training.json, and the model id of the package exported from it
    "name": "recipe",
    # seeds Python, NumPy and TensorFlow (data order, crops, augmentation, initial weights)
    "seed": 0,
    # the images and masks to train and score on
    "dataset": {
        # dagm: DAGM2007 layout; severstal: train.csv + train_images/; folders: images/ + masks/;
        # synthetic: a generated DAGM-like set
        "kind": "dagm",
        # the data set's folder (kind synthetic: where the set is written)
        "root": "",
        # DAGM / synthetic: the class numbers (ClassN folders) to use
        "classes": [1],
        # DAGM / synthetic: train only on images that have a defect (UNet_Industrial's default)
        "only_defective_images": False,
        # DAGM / synthetic: a Labels.txt that disagrees with the files is a warning, not an error
        "lenient": False,
        # Severstal and plain folders have no test split: this fraction of images trains
        "train_fraction": 0.85,
        # every image (and mask) is resized to this before cropping; null keeps the file's size
        "image_size": None,
        # kind synthetic: the generated DAGM-like set (written under root when absent)
        "synthetic": {
            # training images per class
            "n_train": 200,
            # test images per class
            "n_test": 100,
            # image side in pixels
            "size": 512,
            # fraction of images with a defect
            "defect_fraction": 0.5,
        },
    },
    # what the model sees: scaling, crops, batches and augmentation
    "input": {
        # pixel scaling, carried into the model package: zero_one maps 0..255 to 0..1,
        # zero_centered to -1..1
        "normalization": "zero_one",
        # random square crops of this size for training; 0 trains on whole images
        "crop": 0,
        # fraction of training crops centred on a defect (0 = uniform random crops)
        "defect_crop_fraction": 0.5,
        # hard-negative mining (training/mining.py): this fraction of the crops of clean training
        # images is centred on the model's strongest false response (0 = off; needs input.crop)
        "hard_negative_fraction": 0.0,
        # mining runs at the start of training and after every this-many epochs
        "mining_every": 2,
        # training images per step
        "batch_size": 8,
        # keep the decoded images in memory after the first epoch
        "cache": True,
        # random changes to each training crop, image and mask alike
        "augment": {
            # mirror left-right and up-down, each with probability 1/2
            "flip": True,
            # rotate by a random multiple of 90 degrees (square crops only)
            "rot90": True,
            # add up to +-this fraction of 255
            "brightness": 0.1,
            # scale the contrast by x(1 +- this)
            "contrast": 0.1,
            # what a camera adds (0: off): rotate by up to +-this many degrees
            "rotate": 0.0,
            # zoom by x(1 +- this)
            "scale": 0.0,
            # Gaussian blur with sigma up to this many pixels, on half the crops
            "blur": 0.0,
            # gamma: the exponent x(1 + this)^+-1
            "gamma": 0.0,
            # Gaussian noise with sigma up to this many gray levels
            "noise": 0.0,
        },
    },
    # the network
    "model": {
        # tinyunet: NVIDIA's TinyUNet; unet_lowered: a reduced U-Net; mobilenetv2_unet: a U-Net
        # on a MobileNetV2 encoder
        "architecture": "tinyunet",
        # tinyunet: 32 is NVIDIA's tinyUNet (32-32-64-128, bottleneck 256)
        "base_filters": 32,
        # dropout rate in the network (0: none)
        "dropout": 0.0,
        # tinyunet / unet_lowered: BatchNorm after each conv (not in the originals; much faster to converge)
        "batch_norm": False,
        # standardize each input image in the model (zero mean, unit variance): the exported
        # graph carries it, so the line needs nothing new; evens out gain and contrast
        "standardize": False,
        # tinyunet: dilation of the two bottleneck convs (1: NVIDIA's), a wider receptive field
        "bottleneck_dilation": 1,
        # mobilenetv2_unet: a local .weights.h5 / .h5 file of a MobileNetV2 encoder, or null (random)
        "encoder_weights": None,
        # mobilenetv2_unet: the encoder's width multiplier
        "alpha": 1.0,
        # mobilenetv2_unet: encoder layers whose name comes before this one stay frozen (null: none)
        "freeze_until": "block_6_expand",
    },
    # segmentation loss (training/losses.py); adaptive: BCE while the Dice loss is >= 0.3, then Dice
    "loss": "adaptive",
    # how the weights are updated
    "optimizer": {
        # rmsprop (UNet_Industrial's) or adam
        "name": "rmsprop",
        # the learning rate at the start
        "learning_rate": 1e-4,
        # exponential: staircase lr * decay_rate ** (step // decay_steps) (UNet_Industrial);
        # cosine: from learning_rate down to 0 over the whole run (train.epochs x steps_per_epoch)
        "schedule": "exponential",
        # exponential only; decay_steps 0 keeps the learning rate constant
        "decay_steps": 500,
        # exponential: the factor applied every decay_steps
        "decay_rate": 0.8,
        # rmsprop: the discounting factor of the squared-gradient average
        "rho": 0.9,
        # rmsprop: momentum
        "momentum": 0.8,
        # rmsprop: normalize by the gradient's estimated variance
        "centered": True,
        # L2 on the conv kernels, added to the loss as UNet_Industrial does
        "weight_decay": 1e-5,
    },
    # the run
    "train": {
        # epochs to train; a finished run given more epochs resumes
        "epochs": 10,
        # batches per epoch
        "steps_per_epoch": 100,
        # where model.keras, training.json, checkpoints and logs go
        "output_dir": "runs/recipe",
        # mixed_float16 compute (GPUs)
        "mixed_precision": False,
        # tf.distribute strategy: default (one device), mirrored (the GPUs of this box), multi_worker
        "strategy": "default",
        # write TensorBoard logs (when TensorBoard is installed)
        "tensorboard": True,
        # deterministic ops and one inter-op thread: the same seed gives the same model
        "deterministic": True,
        # a progress bar per epoch (running loss and Dice)
        "progress": True,
        # stop at the end of the first epoch that passes this many minutes of training (0: no limit)
        "max_minutes": 0.0,
    },
    # how the model is scored after training, and the decision rule the package gets
    "eval": {
        # a pixel is a defect above this score
        "threshold": 0.5,
        # defect regions smaller than this (pixels) are ignored
        "min_defect_area": 16,
        # hold this fraction of the training images out to choose threshold and min_defect_area
        # after training (training.calibrate); 0 keeps the two values above
        "calibration_fraction": 0.0,
        # calibration chooses the rule that catches the most held-out defects among those whose
        # held-out TNR is at least this (training.calibrate); below it the summary warns
        "min_tnr": 0.98,
        # images per prediction batch
        "batch_size": 4,
        # score at most this many images (0: all)
        "max_images": 0,
    },
}

CHOICES: dict[str, tuple[str, ...]] = {
    "dataset.kind": DATASET_KINDS,
    "input.normalization": tuple(NORMALIZATIONS),
    "model.architecture": ARCHITECTURES,
    "loss": LOSSES,
    "optimizer.name": OPTIMIZERS,
    "optimizer.schedule": SCHEDULES,
    "train.strategy": STRATEGIES,
}

_NULLABLE: dict[str, tuple[type, ...]] = {
    "dataset.image_size": (list, int),
    "model.encoder_weights": (str,),
    "model.freeze_until": (str,),
}


class ConfigError(LinesideError, ValueError):
    """A recipe key or value is unknown or invalid."""


def _merge(base: dict[str, Any], user: dict[str, Any], prefix: str, source: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            msg = f"{source}: unknown key {dotted!r}{did_you_mean(key, base)} (allowed: {', '.join(base)})"
            raise ConfigError(msg)
        default = base[key]
        if isinstance(default, dict) and dotted not in _NULLABLE:
            if not isinstance(value, dict):
                msg = f"{source}: key {dotted!r} must be a mapping with keys {', '.join(default)}"
                raise ConfigError(msg)
            out[key] = _merge(default, value, f"{dotted}.", source)
        else:
            out[key] = _check_value(dotted, default, value, source)
    return out


def _check_value(dotted: str, default: Any, value: Any, source: str) -> Any:
    if value is None:
        if dotted in _NULLABLE:
            return None
        msg = f"{source}: key {dotted!r} must not be empty (default: {default!r})"
        raise ConfigError(msg)
    if dotted in _NULLABLE:
        allowed = _NULLABLE[dotted]
    elif isinstance(default, bool):
        allowed = (bool,)
    elif isinstance(default, float):
        allowed = (float, int)
    elif isinstance(default, int):
        allowed = (int,)
    else:
        allowed = (type(default),)
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        names = "/".join(t.__name__ for t in allowed)
        msg = f"{source}: key {dotted!r} must be {names}, got {value!r}"
        raise ConfigError(msg)
    if dotted in CHOICES and value not in CHOICES[dotted]:
        msg = f"{source}: key {dotted!r} is {value!r}; allowed: {', '.join(CHOICES[dotted])}"
        raise ConfigError(msg)
    return float(value) if isinstance(default, float) and not isinstance(value, bool) else value


def _check_ranges(cfg: dict[str, Any], source: str) -> None:
    def bad(key: str, value: Any, rule: str) -> None:
        msg = f"{source}: key {key!r} is {value!r}; it must be {rule}"
        raise ConfigError(msg)

    if not 0.0 < cfg["dataset"]["train_fraction"] <= 1.0:
        bad("dataset.train_fraction", cfg["dataset"]["train_fraction"], "in (0, 1]")
    classes = cfg["dataset"]["classes"]
    if not classes or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in classes):
        bad("dataset.classes", classes, "a non-empty list of class numbers >= 1")
    size = cfg["dataset"]["image_size"]
    if size is not None:
        size = [size, size] if isinstance(size, int) else size
        if len(size) != 2 or not all(isinstance(v, int) and v >= 16 for v in size):
            bad("dataset.image_size", size, "null, an int or [height, width] of ints >= 16")
        cfg["dataset"]["image_size"] = size
    for key in ("batch_size",):
        if cfg["input"][key] < 1:
            bad(f"input.{key}", cfg["input"][key], ">= 1")
    if cfg["input"]["crop"] < 0:
        bad("input.crop", cfg["input"]["crop"], "0 (whole images) or a crop size in pixels")
    if not 0.0 <= cfg["input"]["defect_crop_fraction"] <= 1.0:
        bad("input.defect_crop_fraction", cfg["input"]["defect_crop_fraction"], "in [0, 1]")
    hard = cfg["input"]["hard_negative_fraction"]
    if not 0.0 <= hard <= 1.0:
        bad("input.hard_negative_fraction", hard, "in [0, 1] (0: no hard-negative mining)")
    if hard and not cfg["input"]["crop"]:
        bad("input.hard_negative_fraction", hard, "0 when input.crop is 0 (whole images: no crop to aim)")
    if cfg["input"]["mining_every"] < 1:
        bad("input.mining_every", cfg["input"]["mining_every"], ">= 1 (epochs between mining passes)")
    for key in ("epochs", "steps_per_epoch"):
        if cfg["train"][key] < 1:
            bad(f"train.{key}", cfg["train"][key], ">= 1")
    if cfg["train"]["max_minutes"] < 0:
        bad("train.max_minutes", cfg["train"]["max_minutes"], ">= 0 (0: no limit)")
    limits = {"rotate": 45.0, "scale": 0.5, "blur": 10.0, "gamma": 2.0, "noise": 64.0}
    for key, top in limits.items():
        value = cfg["input"]["augment"][key]
        if not 0.0 <= value <= top:
            bad(f"input.augment.{key}", value, f"in [0, {top:g}] (0: off)")
    dilation = cfg["model"]["bottleneck_dilation"]
    if dilation < 1 or (dilation > 1 and cfg["model"]["architecture"] != "tinyunet"):
        bad("model.bottleneck_dilation", dilation, ">= 1, and 1 unless model.architecture is tinyunet")
    if cfg["model"]["base_filters"] < 1:
        bad("model.base_filters", cfg["model"]["base_filters"], ">= 1")
    if not 0.0 <= cfg["model"]["dropout"] < 1.0:
        bad("model.dropout", cfg["model"]["dropout"], "in [0, 1)")
    if cfg["optimizer"]["learning_rate"] <= 0:
        bad("optimizer.learning_rate", cfg["optimizer"]["learning_rate"], "> 0")
    if not 0.0 <= cfg["eval"]["threshold"] <= 1.0:
        bad("eval.threshold", cfg["eval"]["threshold"], "in [0, 1]")
    if cfg["eval"]["min_defect_area"] < 0:
        bad("eval.min_defect_area", cfg["eval"]["min_defect_area"], ">= 0")
    if not 0.0 <= cfg["eval"]["calibration_fraction"] <= 0.5:
        bad("eval.calibration_fraction", cfg["eval"]["calibration_fraction"], "in [0, 0.5] (0: none)")
    if not 0.0 <= cfg["eval"]["min_tnr"] <= 1.0:
        bad("eval.min_tnr", cfg["eval"]["min_tnr"], "in [0, 1], e.g. 0.98")
    if cfg["dataset"]["kind"] != "synthetic" and not cfg["dataset"]["root"]:
        bad("dataset.root", "", "the folder of the data set")


def load_config(
    config: dict[str, Any] | str | Path | None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Merge a recipe (YAML path or dict) and dotted ``overrides`` over DEFAULTS, validated."""
    source = "recipe"
    if config is None:
        user: dict[str, Any] = {}
    elif isinstance(config, dict):
        user = copy.deepcopy(config)
    else:
        path = Path(config)
        source = str(path)
        if not path.is_file():
            msg = f"recipe file {path} does not exist; pass a YAML file such as configs/train/demo.yaml"
            raise ConfigError(msg)
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            msg = f"{path}: not valid YAML ({str(exc).splitlines()[0]})"
            raise ConfigError(msg) from None
        if not isinstance(user, dict):
            msg = f"{path}: a recipe must be a YAML mapping, got {type(user).__name__}"
            raise ConfigError(msg)
    for dotted, value in (overrides or {}).items():
        set_value(user, dotted, value, DEFAULTS, error=ConfigError)
    cfg = _merge(DEFAULTS, user, "", source)
    _check_ranges(cfg, source)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` or ``list[0]=value`` from the command line; the value is parsed as YAML
    (so 3, 0.5, true, [1,2], null). The one ``--set`` parser of every command (converter/overrides.py)."""
    return parse_set(text, error=ConfigError)
