"""Calibration of the decision threshold and minimum area on held-out training images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.training.conftest import tiny_recipe
from training.calibrate import choose_min_area, choose_threshold, hold_out
from training.datasets.base import Sample
from training.metrics import largest_region, largest_regions


def _samples() -> list[Sample]:
    out = []
    for class_id in (1, 2):
        for i in range(20):
            defective = i % 4 == 0  # 5 defective, 15 clean per class
            mask = "m.png" if defective else ""
            out.append(Sample(f"c{class_id}/{i}.png", mask, class_id=class_id, defective=defective))
    return out


def test_hold_out_is_stratified_disjoint_and_seeded():
    samples = _samples()
    keep, held = hold_out(samples, 0.2, seed=5)
    assert len(keep) + len(held) == len(samples) and not set(keep) & set(held)
    for class_id in (1, 2):
        assert sum(s.class_id == class_id and s.defective for s in held) == 1  # round(5 * 0.2)
        assert sum(s.class_id == class_id and not s.defective for s in held) == 3  # round(15 * 0.2)
    assert hold_out(samples, 0.2, seed=5) == (keep, held)
    assert hold_out(samples, 0.2, seed=6)[1] != held


def test_hold_out_keeps_one_image_of_each_group_for_training():
    samples = [Sample("a.png", "m.png", class_id=1, defective=True), Sample("b.png", class_id=1)]
    keep, held = hold_out(samples, 0.5, seed=0)
    assert keep == samples and held == []


def test_largest_region_counts_8_connected_pixels():
    prob = np.zeros((10, 10), np.float32)
    prob[1:4, 1:4] = 0.9  # 9 px
    prob[4, 4] = 0.9  # touches the block diagonally: same region
    prob[7:9, 7:9] = 0.6  # 4 px
    assert largest_region(prob, 0.5) == 10
    assert largest_region(prob, 0.7) == 10
    assert largest_region(prob, 0.95) == 0


def test_threshold_with_the_best_dice_ties_nearest_half():
    assert choose_threshold({0.25: 0.90, 0.5: 0.91, 0.75: 0.93}) == 0.75
    assert choose_threshold({0.25: 0.93, 0.5: 0.93, 0.85: 0.93}) == 0.5


def test_min_area_sits_in_the_gap_on_a_log_scale():
    # clean images' largest regions up to 100 px, defects from 1600 px: sqrt(100 * 1600) = 400
    assert choose_min_area([0, 0, 37, 100], [1600, 2500, 9000]) == 400
    # no false region at all: the gap starts at 1 px
    assert choose_min_area([0, 0], [900]) == 30


def test_min_area_where_classes_overlap_makes_fewest_mistakes():
    # a clean image with a 700 px region and a defect of only 500 px: no area is right for both,
    # so the smallest area with one mistake wins (41: the false alarm stays, no defect is missed)
    clean, defective = [0, 40, 700], [500, 1500, 3000]
    area = choose_min_area(clean, defective)
    mistakes = sum(a >= area for a in clean) + sum(a < area for a in defective)
    assert mistakes == 1 and area == 41


@pytest.mark.slow
def test_training_calibrates_and_eval_uses_it(dagm_root, tmp_path):
    from training.eval_cli import evaluate_run
    from training.train import train

    recipe = tiny_recipe(dagm_root, tmp_path / "run")
    recipe["eval"]["calibration_fraction"] = 0.25
    run = train(recipe)
    info = json.loads((run / "training.json").read_text())
    cal = info["calibration"]
    # 2 classes x (4 defective + 4 clean) training images; a quarter of each group held out
    assert cal["images"] == 4 and cal["defective"] == 2
    assert info["threshold"] == cal["threshold"] and info["min_defect_area"] == cal["min_defect_area"]
    assert cal["largest_false_region"] >= cal["largest_clean_region"]
    if cal["largest_false_region"] < cal["smallest_defect_region"]:
        assert cal["largest_false_region"] < cal["min_defect_area"] <= cal["smallest_defect_region"]
        assert cal["tpr"] == cal["tnr"] == 1.0
    summary = evaluate_run(run)
    assert summary["threshold"] == cal["threshold"] and summary["min_defect_area"] == cal["min_defect_area"]
    override = evaluate_run(run, overrides={"eval.min_defect_area": 7}, output=tmp_path / "o")
    assert override["min_defect_area"] == 7


def test_false_regions_are_those_that_touch_no_labelled_defect():
    prob = np.zeros((20, 20), np.float32)
    prob[2:6, 2:6] = 0.9  # 16 px over the defect
    prob[12:15, 12:15] = 0.9  # 9 px false alarm elsewhere
    prob[17, 2:6] = 0.9  # 4 px false alarm
    truth = np.zeros((20, 20), np.float32)
    truth[4:8, 4:8] = 1.0  # overlaps the 16 px region only
    assert largest_regions(prob, 0.5, truth) == (16, 9)
    assert largest_regions(prob, 0.5, np.zeros_like(truth)) == (16, 16)
    assert largest_region(prob, 0.5) == 16
    truth[13, 13] = 1.0  # now both large regions touch a label
    assert largest_regions(prob, 0.5, truth) == (16, 4)
    truth[17, 3] = 1.0  # and all three do
    assert largest_regions(prob, 0.5, truth) == (16, 0)
    assert largest_regions(prob, 0.95, truth) == (0, 0)
