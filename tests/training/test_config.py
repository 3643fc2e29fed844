"""Recipe validation: every error names the key and the allowed values; shipped recipes load."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import ConfigError, load_config, parse_override

RECIPES = sorted((Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_are_valid(recipe):
    cfg = load_config(recipe)
    assert cfg["model"]["architecture"] in ("tinyunet", "unet_lowered", "mobilenetv2_unet")


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
        ({"modle": {}}, "unknown key 'modle'; allowed: name, seed, dataset"),
        (
            {"model": {"architecture": "resnet"}},
            "'model.architecture' is 'resnet'; allowed: tinyunet, unet_lowered",
        ),
        ({"loss": "focal"}, "'loss' is 'focal'; allowed: bce, dice, adaptive, bce_dice"),
        ({"input": {"normalization": "imagenet"}}, "allowed: zero_one, zero_centered"),
        ({"train": {"epochs": "ten"}}, "'train.epochs' must be int, got 'ten'"),
        ({"train": {"epochs": 0}}, "'train.epochs' is 0; it must be >= 1"),
        ({"eval": {"calibration_fraction": 0.7}}, "'eval.calibration_fraction' is 0.7; it must be in"),
        ({"eval": {"min_tnr": 1.5}}, "'eval.min_tnr' is 1.5; it must be in [0, 1], e.g. 0.98"),
        ({"eval": {"min_tnr": "high"}}, "'eval.min_tnr' must be float/int, got 'high'"),
        (
            {"input": {"augment": {"rotation": 5}}},
            "unknown key 'input.augment.rotation'; allowed: flip, rot90",
        ),
        ({"input": {"augment": {"rotate": True}}}, "'input.augment.rotate' must be float/int, got True"),
        (
            {"input": {"augment": {"rotate": 90}}},
            "'input.augment.rotate' is 90.0; it must be in [0, 45] (0: off)",
        ),
        ({"input": {"augment": {"noise": -1}}}, "'input.augment.noise' is -1.0; it must be in [0, 64]"),
        ({"input": {"augment": {"blur": 11}}}, "'input.augment.blur' is 11.0; it must be in [0, 10]"),
        ({"loss": "tversky_focal"}, "allowed: bce, dice, adaptive, bce_dice, tversky, bce_tversky"),
        ({"model": {"bottleneck_dilation": 0}}, "'model.bottleneck_dilation' is 0; it must be >= 1"),
        (
            {"model": {"architecture": "unet_lowered", "bottleneck_dilation": 2}},
            "and 1 unless model.architecture is tinyunet",
        ),
        ({"model": {"standardize": "yes"}}, "'model.standardize' must be bool, got 'yes'"),
        ({"dataset": {"kind": "dagm", "root": ""}}, "'dataset.root'"),
        ({"dataset": {"classes": []}}, "'dataset.classes'"),
        ({"optimizer": {"name": "sgd"}}, "allowed: rmsprop, adam"),
    ],
)
def test_bad_recipes_name_key_and_allowed_values(recipe, message):
    recipe.setdefault("dataset", {}).setdefault("root", "/data")
    with pytest.raises(ConfigError, match=_escape(message)):
        load_config(recipe)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_recipe_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {architecture: unet}\ndataset: {root: x}\n")
    with pytest.raises(ConfigError, match=f"{_escape(str(bad))}: key 'model.architecture'"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(bad)
