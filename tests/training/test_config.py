"""Recipe validation: every error names the key and the allowed values; shipped recipes load."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import ConfigError, load_config, parse_override

RECIPES = sorted((Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_are_valid(recipe):
    cfg = load_config(recipe)
    assert cfg["model"]["architecture"] in ("tinyunet", "unet_lowered", "mobilenetv2_unet", "lcnet_unet")


def test_defaults_merge_and_overrides():
    cfg = load_config({"dataset": {"root": "/data"}, "input": {"crop": 64}}, {"train.epochs": 3, "seed": 9})
    assert cfg["input"]["crop"] == 64 and cfg["input"]["batch_size"] == 8
    assert cfg["train"]["epochs"] == 3 and cfg["seed"] == 9
    assert cfg["optimizer"]["learning_rate"] == pytest.approx(1e-4)
    assert cfg["eval"]["min_tnr"] == 0.98
    assert parse_override("input.augment.flip=false") == ("input.augment.flip", False)
    assert parse_override("dataset.classes=[1, 3]") == ("dataset.classes", [1, 3])


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"modle": {}}, "unknown key 'modle'; did you mean 'model'? (allowed here: name, seed, dataset"),
        (
            {"model": {"architecture": "resnet"}},
            "model.architecture is 'resnet'; allowed: tinyunet, unet_lowered",
        ),
        ({"loss": "lovasz"}, "loss is 'lovasz'; allowed: bce, dice, adaptive, bce_dice"),
        ({"input": {"normalization": "imagenet"}}, "allowed: zero_one, zero_centered"),
        ({"train": {"epochs": "ten"}}, "train.epochs must be int, got 'ten'"),
        ({"train": {"epochs": 0}}, "train.epochs is 0; must be >= 1"),
        (
            {"eval": {"calibration_fraction": 0.7}},
            "eval.calibration_fraction is 0.7; must be between 0 and 0.5 (0: none)",
        ),
        ({"eval": {"min_tnr": 1.5}}, "eval.min_tnr is 1.5; must be between 0 and 1 (e.g. 0.98)"),
        ({"eval": {"min_tnr": "high"}}, "eval.min_tnr must be float, got 'high'"),
        (
            {"input": {"augment": {"rotation": 5}}},
            "unknown key 'input.augment.rotation'; did you mean 'rotate'? (allowed here: flip, rot90",
        ),
        ({"input": {"augment": {"rotate": True}}}, "input.augment.rotate must be float, got True"),
        (
            {"input": {"augment": {"rotate": 90}}},
            "input.augment.rotate is 90.0; must be between 0 and 45 (0: off)",
        ),
        ({"input": {"augment": {"noise": -1}}}, "input.augment.noise is -1.0; must be between 0 and 64"),
        ({"input": {"augment": {"blur": 11}}}, "input.augment.blur is 11.0; must be between 0 and 10"),
        ({"loss": "tversky_focal"}, "allowed: bce, dice, adaptive, bce_dice, focal, focal_dice, tversky"),
        ({"model": {"bottleneck_dilation": 0}}, "model.bottleneck_dilation is 0; must be >= 1"),
        (
            {"model": {"architecture": "unet_lowered", "bottleneck_dilation": 2}},
            "model.bottleneck_dilation is 2; must be 1 unless model.architecture is tinyunet",
        ),
        ({"model": {"standardize": "yes"}}, "model.standardize must be bool, got 'yes'"),
        (
            {"model": {"instance_norm": True}},
            "model.instance_norm is True; needs model.batch_norm: true (it takes BatchNorm's place)",
        ),
        ({"model": {"input_stride": 3}}, "model.input_stride is 3; must be 1, 2 or 4"),
        (
            {"model": {"stem_filters": 48}},
            "model.stem_filters is 48; needs model.input_stride 2 or 4 (there is no stem at 1)",
        ),
        (
            {"model": {"fine_filters": 8}},
            "model.fine_filters is 8; needs model.input_stride 2 or 4 (at 1 the network is at full",
        ),
        ({"model": {"fine_stride": 3}}, "model.fine_stride is 3; must be 1 or 2"),
        (
            {"model": {"architecture": "lcnet_unet", "freeze_stride": 16}},
            "model.freeze_stride is 16; must be 0, 2, 4 or 8",
        ),
        (
            {"model": {"freeze_stride": 4}},
            "model.freeze_stride is 4; must be 0 unless model.architecture is lcnet_unet",
        ),
        (
            {"model": {"architecture": "tinyunet", "encoder_weights": "ppocr"}},
            "model.encoder_weights is 'ppocr'; must be null unless model.architecture is mobilenetv2_unet",
        ),
        (
            {"model": {"surface_window": 64}},
            "model.surface_window is 64; must be 0 or 4 times an odd number (its mean is over 4x4"
            " cells, centred); try 60 or 68",
        ),
        ({"model": {"surface_window": 2}}, "model.surface_window is 2; must be 0 or 4 times an odd number"),
        (
            {"model": {"architecture": "unet_lowered", "surface_window": 60}},
            "model.surface_window is 60; must be 0 unless model.architecture is tinyunet",
        ),
        (
            {"model": {"input_stride": 4, "fine_stride": 2}, "input": {"crop": 128}},
            "model.fine_stride is 2; needs model.fine_filters > 0 and model.input_stride 4",
        ),
        (
            {"model": {"input_stride": 2, "fine_filters": 8, "fine_stride": 2}},
            "model.fine_stride is 2; needs model.fine_filters > 0 and model.input_stride 4",
        ),
        (
            {"model": {"input_stride": 4}, "input": {"crop": 160}},
            "input.crop is 160; must divide by 64 (tinyunet at model.input_stride 4); try 128 or 192",
        ),
        (
            {"input": {"crop": 8}},
            "input.crop is 8; must divide by 16 (tinyunet at model.input_stride 1); try 16",
        ),
        (
            {"model": {"architecture": "unet_lowered", "input_stride": 2}},
            "model.input_stride is 2; must be 1 unless model.architecture is tinyunet",
        ),
        (
            {"dataset": {"kind": "dagm", "root": ""}},
            "dataset.root is ''; must be the folder of the dagm data set",
        ),
        (
            {"dataset": {"classes": []}},
            "dataset.classes is []; must be a non-empty list of class numbers >= 1",
        ),
        ({"optimizer": {"name": "sgd"}}, "allowed: rmsprop, adam"),
        (
            {"dataset": {"image_size": 8}},
            "dataset.image_size is 8; must be null, an int or [height, width] of ints >= 16",
        ),
        ({"dataset": {"image_size": "big"}}, "dataset.image_size must be int or list of int, got 'big'"),
        ({"dataset": {"classes": [1, True]}}, "dataset.classes[1] must be int, got True"),
        ({"input": {"hard_negative_fraction": 0.3}}, "must be 0 when input.crop is 0"),
        ({"train": {"max_minutes": float("nan")}}, "train.max_minutes is nan; must be a finite number"),
    ],
)
def test_bad_recipes_name_key_and_allowed_values(recipe, message):
    recipe.setdefault("dataset", {}).setdefault("root", "/data")
    with pytest.raises(ConfigError, match=_escape(message)):
        load_config(recipe)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_image_size_as_one_int_means_a_square():
    cfg = load_config({"dataset": {"root": "/d", "image_size": 64}})
    assert cfg["dataset"]["image_size"] == [64, 64]
    cfg = load_config({"dataset": {"root": "/d", "image_size": [32, 48]}})
    assert cfg["dataset"]["image_size"] == [32, 48]


def test_recipe_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe file not found; see configs/train/demo\.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {architecture: unet}\ndataset: {root: x}\n")
    with pytest.raises(ConfigError, match=f"{_escape(str(bad))}: model.architecture is 'unet'"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(bad)


def test_set_indexes_lists_and_reads_yaml_values():
    overrides = dict(
        parse_override(text)
        for text in ("dataset.classes[1]=3", "optimizer.weight_decay=0", "model.encoder_weights=null")
    )
    cfg = load_config({"dataset": {"root": "/data", "classes": [1, 2]}}, overrides)
    assert cfg["dataset"]["classes"] == [1, 3]
    assert cfg["optimizer"]["weight_decay"] == 0 and cfg["model"]["encoder_weights"] is None
    # a list the recipe leaves at its default is indexed in the default ([1])
    assert load_config({"dataset": {"root": "/d"}}, {"dataset.classes[0]": 4})["dataset"]["classes"] == [4]
    assert load_config({"dataset": {"root": "/d"}}, {"dataset.classes[-1]": 2})["dataset"]["classes"] == [2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataset.classes[5]=3", "dataset.classes[5] is past the end; dataset.classes has 2 items (0..1)"),
        ("model..x=1", "an empty part (two dots, or a dot at an end)"),
        ("train.epochs", "expected KEY=VALUE"),
        ("=3", "the key is empty"),
        ("model[0]=1", "model is a mapping, not a list; drop the [0]"),
        ("train.epochs[0]=1", "train.epochs is 10, not a list"),
        ("train.epochs.x=1", "train.epochs is 10, not a mapping"),
        ("optimizer.weight_decy=0", "unknown key 'optimizer.weight_decy'; did you mean 'weight_decay'?"),
        ("modle.x=1", "unknown key 'modle'; did you mean 'model'?"),
        ("train.epochs=[1", "the value is not valid YAML"),
        ("cameras[0]x=1", "'cameras[0]x' is not a key"),
    ],
)
def test_bad_set_is_one_error_line(text, message):
    recipe = {"dataset": {"root": "/data", "classes": [1, 2]}, "train": {"epochs": 10}}
    with pytest.raises(ConfigError, match=_escape(message)) as err:
        load_config(recipe, dict([parse_override(text)]))
    assert "\n" not in str(err.value)


def test_bad_set_through_the_train_command(tmp_path, capsys):
    from edge.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: {root: x, classes: [1]}\n")
    assert main(["train", str(recipe), "--set", "optimizer.learning_rte=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'learning_rate'?" in err
    assert main(["train", str(recipe), "--set", "dataset.classes[3]=2"]) == 2
    assert "dataset.classes[3] is past the end; dataset.classes has 1 item (0..0)" in capsys.readouterr().err


def _sections(cls: type) -> list[type]:
    """``cls`` and every dataclass below it."""
    import dataclasses
    import typing

    out = [cls]
    for tp in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(tp):
            out += _sections(tp)
    return out


def test_every_recipe_key_has_a_rule_that_its_default_passes():
    """Declared like the line config (converter/schema.py): a new key needs its rule."""
    import dataclasses

    from training.config import Recipe

    sections = _sections(Recipe)
    assert len(sections) >= 8
    for cls in sections:
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory):
                continue
            rule, allowed = f.metadata.get("rule"), f.metadata.get("choices")
            assert rule is not None or allowed, f"{cls.__name__}.{f.name} has no rule"
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            assert default in (allowed or (default,)), f.name
            assert rule is None or default is None or rule.check(default), f"{f.name}: {default!r}"
