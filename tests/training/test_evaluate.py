"""``lineside eval`` shows what fails: the worst images per class in the grid, one JSON row per image.

The model is a real Keras model with fixed weights (a 1x1 sigmoid convolution: a white
pixel is a defect, a black one is not), so each image's Dice and false region are
known exactly from the files written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import import_tensorflow_or_skip

# (name, label square (top, left, side) or None, white squares painted into the image)
LABEL = (4, 4, 8)  # 64 px
CLASS1 = [
    ("0000.PNG", LABEL, [LABEL]),  # found exactly: Dice 1
    ("0001.PNG", LABEL, [(6, 6, 4)]),  # 16 of 64 px: Dice 0.4
    ("0002.PNG", LABEL, []),  # missed: Dice 0
    ("0003.PNG", None, []),  # clean, nothing predicted
    ("0004.PNG", None, [(20, 20, 3)]),  # clean, a 9 px false region
    ("0005.PNG", None, [(20, 20, 6)]),  # clean, a 36 px false region
]
CLASS2 = [
    ("0000.PNG", LABEL, [(4, 4, 6)]),  # 36 of 64 px: Dice 0.72
    ("0001.PNG", LABEL, [LABEL, (24, 24, 5)]),  # Dice 128/153, with a 25 px false region
    ("0002.PNG", None, [(16, 16, 5)]),  # clean, 25 px
    ("0003.PNG", None, []),
]


def _write_class(root: Path, class_id: int, images) -> None:
    test = root / f"Class{class_id}" / "Test"
    (test / "Label").mkdir(parents=True)
    (root / f"Class{class_id}" / "Train").mkdir()
    cv2.imwrite(str(root / f"Class{class_id}" / "Train" / "0000.PNG"), np.zeros((32, 32), np.uint8))
    for name, label, white in images:
        image = np.zeros((32, 32), np.uint8)
        for top, left, side in white:
            image[top : top + side, left : left + side] = 255
        cv2.imwrite(str(test / name), image)
        if label:
            mask = np.zeros((32, 32), np.uint8)
            top, left, side = label
            mask[top : top + side, left : left + side] = 255
            cv2.imwrite(str(test / "Label" / name.replace(".PNG", "_label.PNG")), mask)


@pytest.fixture(scope="module")
def white_is_defect(tmp_path_factory):
    import_tensorflow_or_skip()
    """(run dir holding model.keras, recipe) over a two-class DAGM-layout set of 32x32 images."""
    import keras

    root = tmp_path_factory.mktemp("dagm")
    _write_class(root, 1, CLASS1)
    _write_class(root, 2, CLASS2)
    inputs = keras.Input((None, None, 1))
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.set_weights([np.full((1, 1, 1, 1), 40.0, np.float32), np.array([-20.0], np.float32)])
    run = tmp_path_factory.mktemp("run")
    model.save(run / "model.keras")
    recipe = {
        "dataset": {"kind": "dagm", "root": str(root), "classes": [1, 2]},
        "eval": {"threshold": 0.5, "min_defect_area": 4},
    }
    return run, recipe


def test_grid_shows_the_worst_images_of_each_class(white_is_defect):
    import keras

    from training.config import load_config
    from training.datasets import load_splits
    from training.evaluate import evaluate_model

    run, recipe = white_is_defect
    cfg = load_config(recipe)
    model = keras.models.load_model(run / "model.keras", compile=False)
    samples = load_splits(cfg)[1]
    _, examples = evaluate_model(model, samples, cfg, n_examples=4)
    shown = [(e["class_id"], e["row"]["name"]) for e in examples]
    # per class: defective by lowest Dice, then clean by largest false region
    assert shown == [
        (1, "0002.PNG"),
        (1, "0001.PNG"),
        (1, "0005.PNG"),
        (1, "0004.PNG"),
        (2, "0000.PNG"),
        (2, "0001.PNG"),
        (2, "0002.PNG"),
        (2, "0003.PNG"),
    ]
    _, examples = evaluate_model(model, samples, cfg, n_examples=2)
    assert [(e["class_id"], e["row"]["name"]) for e in examples] == [
        (1, "0002.PNG"),
        (1, "0005.PNG"),
        (2, "0000.PNG"),
        (2, "0002.PNG"),
    ]
    missed = examples[0]
    assert missed["image"].dtype == np.uint8 and missed["mask"].sum() == 64 and missed["prob"].max() < 0.01


def test_eval_json_keeps_a_row_per_image(white_is_defect, tmp_path):
    from training.eval_cli import evaluate_run

    run, recipe = white_is_defect
    evaluate_run(run, recipe, output=tmp_path, n_examples=2)
    summary = json.loads((tmp_path / "eval.json").read_text())
    rows = summary["images"]
    assert "by_defect" not in summary  # a set that does not record its defects
    assert (tmp_path / "eval_grid.png").read_bytes()[:4] == b"\x89PNG"
    assert len(rows) == 10
    by_name = {(r["class_id"], r["name"]): r for r in rows}
    found, half, missed, clean, alarm = (by_name[(1, f"000{i}.PNG")] for i in (0, 1, 2, 3, 5))
    assert Path(found["image"]).parts[-3:] == ("Class1", "Test", "0000.PNG")
    assert (found["defective"], found["predicted_defective"], found["outcome"]) == (True, True, "TP")
    assert found["dice"] == pytest.approx(1.0) and found["defect_px"] == 64
    assert half["dice"] == pytest.approx(0.4) and half["largest_region_px"] == 16
    assert missed["outcome"] == "FN" and missed["dice"] == pytest.approx(0.0, abs=1e-6)
    assert missed["largest_region_px"] == 0 and missed["predicted_px"] == 0
    assert clean["outcome"] == "TN" and clean["dice"] is None and clean["largest_false_region_px"] == 0
    assert alarm["outcome"] == "FP" and alarm["largest_false_region_px"] == alarm["largest_region_px"] == 36
    extra = by_name[(2, "0001.PNG")]
    assert extra["largest_region_px"] == 64 and extra["largest_false_region_px"] == 25
    assert extra["predicted_px"] == 89 and extra["dice"] == pytest.approx(128 / 153)
    # both its regions reach the minimum area (4 px), so the line's mask is the thresholded map
    assert extra["dice_line"] == pytest.approx(128 / 153) and clean["dice_line"] is None


def test_a_real_surface_set_gets_its_misses_by_defect_kind_and_visibility(white_is_defect, tmp_path, capsys):
    """A set that records its defects (realsurface.json, as ``lineside realsurface`` writes it):
    eval.json and the printout group the defective images by kind and visibility band."""
    import shutil

    from training.datasets.realsurface import MARKER
    from training.eval_cli import evaluate_run

    run, recipe = white_is_defect
    root = tmp_path / "set"
    shutil.copytree(recipe["dataset"]["root"], root)
    defects = {
        "1": {
            "Test": {
                "defects": {
                    "0000.PNG": ("blob", 2.5),
                    "0001.PNG": ("blob", 0.7),
                    "0002.PNG": ("scratch", 0.3),
                }
            }
        },
        "2": {"Test": {"defects": {"0000.PNG": ("scratch", 0.8), "0001.PNG": ("smudge", 1.5)}}},
    }
    for split in defects.values():
        split["Test"]["defects"] = {
            n: {"kind": k, "visibility": v} for n, (k, v) in split["Test"]["defects"].items()
        }
    (root / MARKER).write_text(json.dumps({"classes": defects}))
    local = {**recipe, "dataset": {**recipe["dataset"], "root": str(root)}}
    evaluate_run(run, local, output=tmp_path / "out", n_examples=0)
    groups = json.loads((tmp_path / "out" / "eval.json").read_text())["by_defect"]
    # Class1 0000 and 0001 are found (64 and 16 px), 0002 is missed; Class2 finds both
    assert {k: (g["images"], g["found"]) for k, g in groups.items()} == {
        "scratch": (2, 1),
        "blob": (2, 2),
        "smudge": (1, 1),
        "visibility 0-0.5": (1, 0),
        "visibility 0.5-1": (2, 2),
        "visibility 1-2": (1, 1),
        "visibility >= 2": (1, 1),
    }
    assert groups["blob"]["dice"] == pytest.approx((1.0 + 0.4) / 2, abs=1e-4)
    printed = capsys.readouterr().out
    assert "by defect kind and by visibility" in printed and "visibility 0-0.5" in printed


def test_eval_names_the_best_rule_in_hindsight_at_the_tnr_floor(white_is_defect, tmp_path, capsys):
    """Beside the run's own rule, eval gives the rule calibration would choose on the scored images
    themselves: what the model could reach at the TNR floor, so a reader sees whether the misses
    are calibration's or the model's."""
    from training.calibrate import Evidence, hindsight_rule
    from training.eval_cli import evaluate_run

    run, recipe = white_is_defect
    # defects' largest regions 64, 16, 0, 36, 64 px; clean images' 0, 9, 36, 25, 0 px and one
    # 25 px false region on a defective image. At the 98 % floor no alarm may pass: an area of
    # 37-64 px catches the two 64 px defects (middle on a log scale: sqrt(36 * 64) = 48)
    summary = evaluate_run(run, recipe, output=tmp_path, n_examples=0)
    best = json.loads((tmp_path / "eval.json").read_text())["hindsight"]
    assert best == summary["hindsight"]
    assert {k: v for k, v in best.items() if k != "dice"} == {
        "threshold": 0.5,
        "min_defect_area": 48,
        "tpr": 0.4,
        "tnr": 1.0,
        "min_tnr": 0.98,
        "meets_tnr_floor": True,
    }
    assert best["dice"] == pytest.approx((1 + 0.4 + 0 + 0.72 + 128 / 153) / 5, abs=1e-4)
    # the run's own rule (min area 4) catches 4 of 5 but fails 3 of 5 clean images
    assert (summary["overall"]["tpr"], summary["overall"]["tnr"]) == (0.8, 0.4)
    printed = capsys.readouterr().out
    assert (
        "test in hindsight: Dice 0.591 · TPR 40.0 % · TNR 100.0 % (threshold 0.5, min area 48 px)" in printed
    )
    # a floor of 60 % lets the 9 px alarm and two clean images of three fail: 10-16 px catches 4
    summary = evaluate_run(run, recipe, {"eval.min_tnr": 0.6}, output=tmp_path, n_examples=0)
    assert summary["hindsight"]["tpr"] == 0.8 and summary["hindsight"]["min_defect_area"] == 12
    assert summary["hindsight"]["tnr"] == 0.6
    # a split with only one kind of image has no such rule
    only_defects = Evidence([True, True], {0.5: [64, 9]}, {0.5: [0, 0]}, {0.5: 0.9})
    assert hindsight_rule(only_defects, 0.98) is None


def test_eval_draws_the_line_mask_at_the_runs_mask_threshold(white_is_defect, tmp_path, capsys):
    import shutil

    from training.eval_cli import evaluate_run

    run, recipe = white_is_defect
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "training.json").write_text(
        json.dumps({"threshold": 0.5, "min_defect_area": 4, "mask_threshold": 0.125})
    )
    summary = evaluate_run(copy, recipe, output=tmp_path, n_examples=0)
    assert (summary["threshold"], summary["mask_threshold"]) == (0.5, 0.125)
    assert "the line's mask (regions >= 4 px) @0.5, drawn @0.125: Dice" in capsys.readouterr().out
    # --set still wins
    summary = evaluate_run(copy, recipe, {"eval.mask_threshold": 0.75}, output=tmp_path, n_examples=0)
    assert summary["mask_threshold"] == 0.75


def test_a_negative_example_count_is_one_clear_error(white_is_defect):
    from training.eval_cli import EvalError, evaluate_run

    run, recipe = white_is_defect
    with pytest.raises(
        EvalError, match=r"--examples is -1; it must be 0 \(no grid\) or more images per class"
    ):
        evaluate_run(run, recipe, n_examples=-1)


def test_a_run_from_another_version_is_scored_with_its_unknown_keys_named(white_is_defect, tmp_path, caplog):
    """recipe.json of a run trained by another lineside may hold a key this one lacks: eval warns
    naming it and scores the run; a recipe the user passes stays strict, and a corrupt
    recipe.json is one clear error."""
    import logging
    import shutil

    from training.config import ConfigError
    from training.eval_cli import EvalError, evaluate_run

    model_run, recipe = white_is_defect
    run = tmp_path / "old-run"
    run.mkdir()
    shutil.copy(model_run / "model.keras", run / "model.keras")
    recorded = {
        **recipe,
        "input": {"crop": 0, "paste_decoy_source": "clean_images"},
        "retired_section": {"x": 1},
    }
    (run / "recipe.json").write_text(json.dumps(recorded))
    with caplog.at_level(logging.WARNING, logger="training.eval_cli"):
        summary = evaluate_run(run, output=tmp_path / "out", n_examples=0)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2
    assert "sets input.paste_decoy_source, which this lineside does not have" in warned[0]
    assert "sets retired_section," in warned[1]
    assert str(run / "recipe.json") in warned[0]
    # scored with the recorded decision (min area 4 px): 4 of 5 defective images found, 2 of 5
    # clean ones passed
    assert summary["overall"]["tpr"] == pytest.approx(4 / 5)
    assert summary["overall"]["tnr"] == pytest.approx(2 / 5)
    with pytest.raises(ConfigError, match=r"unknown key 'input.paste_decoy_source'"):
        evaluate_run(run, recorded, output=tmp_path / "strict", n_examples=0)
    (run / "recipe.json").write_text('{"dataset": ')
    with pytest.raises(EvalError, match=r"recipe.json: not valid JSON .*; pass --config with the recipe"):
        evaluate_run(run, n_examples=0)


def test_eval_camera_scores_the_same_images_under_each_artifact(white_is_defect, tmp_path, capsys):
    """On the white-is-defect model (tests/training/test_evaluate.py) at a minimum area of 1 px, a
    single hot pixel on a black clean image fails it: the two blank clean images of five fail
    under stuck pixels and pass as they are. The first row is the plain evaluation's."""
    from edge.cli import main
    from training.camera import ARTIFACTS

    run, recipe = white_is_defect
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    out = tmp_path / "eval"
    argv = ["eval", str(run), "--config", str(path), "-o", str(out), "--examples", "0", "--camera"]
    assert main([*argv, "--set", "eval.min_defect_area=1"]) == 0
    summary = json.loads((out / "eval.json").read_text())
    rows = {row["artifact"]: row for row in summary["camera"]}
    assert list(rows) == ["none", *ARTIFACTS]
    assert (rows["none"]["tpr"], rows["none"]["tnr"]) == (
        summary["overall"]["tpr"],
        summary["overall"]["tnr"],
    )
    assert rows["none"]["tnr"] == 0.4 and rows["stuck pixels"]["tnr"] == 0.0
    assert rows["stuck pixels"]["tpr"] >= rows["none"]["tpr"]
    # the blur takes the 9 px alarm under the threshold, and some of each defect's edge with it
    assert rows["defocus 1.5"]["tnr"] > 0.4 and rows["defocus 1.5"]["dice"] < rows["none"]["dice"]
    printed = capsys.readouterr().out
    assert "what a camera adds (test, threshold 0.5, min area 1 px;" in printed
    line = next(x for x in printed.splitlines() if x.strip().startswith("stuck pixels"))
    assert line.split()[-8:] == ["0.0", "%", "-40.0", "TNR", "under", "eval.min_tnr", "(98", "%)"]
