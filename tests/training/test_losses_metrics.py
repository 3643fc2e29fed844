"""Losses and metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import needs_tensorflow
from training.metrics import SegmentationScores, dice_iou, format_table


@needs_tensorflow
def test_dice_coefficient_and_losses_by_hand():
    from training import losses

    y_true = np.array([1, 1, 0, 0], np.float32).reshape(1, 2, 2, 1)
    y_pred = np.array([1, 0.5, 0.5, 0], np.float32).reshape(1, 2, 2, 1)
    # intersection 1.5, |A| + |B| = 2 + 2, smooth 1: (3 + 1) / (4 + 1)
    assert float(losses.dice_coefficient(y_true, y_pred)) == pytest.approx(0.8)
    assert float(losses.dice_loss(y_true, y_pred)) == pytest.approx(0.2)
    clipped = np.clip(y_pred, 1e-7, 1 - 1e-7)
    bce = -np.mean(y_true * np.log(clipped) + (1 - y_true) * np.log(1 - clipped))
    assert float(losses.bce_loss(y_true, y_pred)) == pytest.approx(bce, rel=1e-4)
    assert float(losses.bce_dice_loss(y_true, y_pred)) == pytest.approx(bce + 0.2, rel=1e-4)
    # Dice loss 0.2 < 0.3: the adaptive loss is the Dice loss
    assert float(losses.adaptive_loss(y_true, y_pred)) == pytest.approx(0.2)
    # a poor prediction (Dice loss >= 0.3): the adaptive loss is the BCE
    poor = np.array([0.2, 0.1, 0.9, 0.4], np.float32).reshape(1, 2, 2, 1)
    assert float(losses.dice_loss(y_true, poor)) >= 0.3
    assert float(losses.adaptive_loss(y_true, poor)) == pytest.approx(float(losses.bce_loss(y_true, poor)))
    allowed = (
        "bce, dice, adaptive, bce_dice, focal, focal_dice, tversky, bce_tversky, bce_dice_per_image, "
        "bce_dice_peak, focal_dice_peak"
    )
    with pytest.raises(ValueError, match=f"allowed: {allowed}"):
        losses.get_loss("lovasz")


@needs_tensorflow
def test_focal_loss_by_hand_weighs_down_the_pixels_already_right():
    from training import losses

    y_true = np.array([1, 1, 0, 0], np.float32).reshape(1, 2, 2, 1)
    y_pred = np.array([0.9, 0.4, 0.1, 0.7], np.float32).reshape(1, 2, 2, 1)
    p_t = np.where(y_true == 1, y_pred, 1 - y_pred)
    by_hand = np.mean(-((1 - p_t) ** 2) * np.log(p_t))
    assert float(losses.focal_loss(y_true, y_pred)) == pytest.approx(by_hand, rel=1e-4)
    # against the BCE, a pixel scored right (p_t 0.9) loses 99 % of its weight, a wrong one
    # (p_t 0.3) half: the confused pixels carry the loss
    right = np.array([0.9, 0.9, 0.1, 0.1], np.float32).reshape(1, 2, 2, 1)
    wrong = np.array([0.3, 0.3, 0.7, 0.7], np.float32).reshape(1, 2, 2, 1)
    for pred, weight in ((right, 0.01), (wrong, 0.49)):
        ratio = float(losses.focal_loss(y_true, pred)) / float(losses.bce_loss(y_true, pred))
        assert ratio == pytest.approx(weight, rel=1e-3)
    dice = float(losses.dice_loss(y_true, y_pred))
    assert float(losses.get_loss("focal_dice")(y_true, y_pred)) == pytest.approx(by_hand + dice, rel=1e-4)


@needs_tensorflow
def test_tversky_loss_by_hand_weighs_a_missed_pixel_above_a_false_one():
    from training import losses

    y_true = np.array([1, 1, 0, 0], np.float32).reshape(1, 2, 2, 1)
    y_pred = np.array([1, 0.5, 0.5, 0], np.float32).reshape(1, 2, 2, 1)
    # TP 1.5, FP 0.5, FN 0.5, smooth 1: 1 - 2.5 / (2.5 + 0.3 * 0.5 + 0.7 * 0.5)
    assert float(losses.tversky_loss(y_true, y_pred)) == pytest.approx(1 - 2.5 / 3.0)
    missed = np.array([1, 0, 0, 0], np.float32).reshape(1, 2, 2, 1)  # one defect pixel missed
    false = np.array([1, 1, 1, 0], np.float32).reshape(1, 2, 2, 1)  # one clean pixel flagged
    assert float(losses.tversky_loss(y_true, missed)) > float(losses.tversky_loss(y_true, false))
    # and by more than the Dice loss does (alpha = beta = 0.5)
    ratio_tversky = float(losses.tversky_loss(y_true, missed)) / float(losses.tversky_loss(y_true, false))
    assert ratio_tversky > float(losses.dice_loss(y_true, missed)) / float(losses.dice_loss(y_true, false))
    bce = float(losses.bce_loss(y_true, y_pred))
    assert float(losses.bce_tversky_loss(y_true, y_pred)) == pytest.approx(bce + 1 - 2.5 / 3.0, rel=1e-4)


@needs_tensorflow
def test_per_image_dice_weighs_a_small_defect_as_much_as_a_large_one():
    from training import losses

    # a batch of three 4x4 crops: a large defect found (8 px), a small one missed (1 px), a clean crop
    y_true = np.zeros((3, 4, 4, 1), np.float32)
    y_pred = np.zeros((3, 4, 4, 1), np.float32)
    y_true[0, :2] = 1
    y_pred[0, :2] = 1
    y_true[1, 0, 0] = 1
    y_pred[2, 3, 3] = 0.5  # a false half-pixel on the clean crop
    # per crop, smooth 1: large (16 + 1) / (16 + 1) = 1; small (0 + 1) / (1 + 0 + 1) = 0.5; the
    # clean crop is not scored; mean loss over the two defective crops: (0 + 0.5) / 2
    assert float(losses.dice_per_image_loss(y_true, y_pred)) == pytest.approx(0.25)
    # over the batch the missed pixel hardly counts: 1 - (2 * 8 + 1) / (9 + 8.5 + 1)
    assert float(losses.dice_loss(y_true, y_pred)) == pytest.approx(1 - 17 / 18.5)
    assert float(losses.dice_per_image_loss(y_true, y_pred)) > 3 * float(losses.dice_loss(y_true, y_pred))
    # no defect in the batch: nothing to score, the BCE alone keeps the crops clean
    clean = np.zeros((2, 4, 4, 1), np.float32)
    assert float(losses.dice_per_image_loss(clean, clean + 0.3)) == 0.0
    bce = float(losses.bce_loss(y_true, y_pred))
    assert float(losses.get_loss("bce_dice_per_image")(y_true, y_pred)) == pytest.approx(bce + 0.25, rel=1e-4)


@needs_tensorflow
def test_peak_term_asks_for_the_brightest_tenth_of_each_label_and_nothing_else():
    from training import losses

    # a weak label: a 10x10 square (100 px) around a thin "scratch" (a 1x10 row) on a 20x20 crop,
    # and a clean crop
    y_true = np.zeros((2, 20, 20, 1), np.float32)
    y_true[0, 5:15, 5:15] = 1
    y_pred = np.full((2, 20, 20, 1), 0.01, np.float32)
    y_pred[0, 9, 5:15] = 0.8  # only the scratch is marked: the top 10 of 100 label px
    assert float(losses.peak_loss(y_true, y_pred)) == pytest.approx(-np.log(0.8), rel=1e-5)
    # the rest of the ellipse does not matter to it, nor do pixels outside the label
    y_other = y_pred.copy()
    y_other[0, 5, 5:15] = 0.3
    y_other[0, 0, :] = 1.0
    y_other[1] = 1.0
    assert float(losses.peak_loss(y_true, y_other)) == pytest.approx(-np.log(0.8), rel=1e-5)
    # the label left unmarked costs -log(0.01) where the batch Dice hardly moves
    unmarked = np.full_like(y_pred, 0.01)
    assert float(losses.peak_loss(y_true, unmarked)) == pytest.approx(-np.log(0.01), rel=1e-4)
    # a bright pixel outside the label does not satisfy it
    outside = unmarked.copy()
    outside[0, 0, :] = 1.0
    assert float(losses.peak_loss(y_true, outside)) == pytest.approx(-np.log(0.01), rel=1e-4)
    # no label in the batch: nothing to ask for
    assert float(losses.peak_loss(np.zeros_like(y_true), y_pred)) == 0.0
    # the cap on pixels: with at most 4, the top 4 of the scratch's 10
    assert float(losses.peak_loss(y_true, y_pred, max_pixels=4)) == pytest.approx(-np.log(0.8), rel=1e-5)
    expected = float(losses.bce_dice_loss(y_true, y_pred)) - np.log(0.8)
    assert float(losses.get_loss("bce_dice_peak")(y_true, y_pred)) == pytest.approx(expected, rel=1e-4)
    expected = float(losses.focal_dice_loss(y_true, y_pred)) - np.log(0.8)
    assert float(losses.get_loss("focal_dice_peak")(y_true, y_pred)) == pytest.approx(expected, rel=1e-4)


@needs_tensorflow
def test_peak_term_trains_in_a_keras_graph_of_unknown_image_size():
    """Keras traces the loss with (None, None, None, 1) shapes; top_k's k must come out right."""
    import keras

    from training import losses

    rng = np.random.default_rng(0)
    x = rng.uniform(0.4, 0.6, (8, 32, 32, 1)).astype(np.float32)
    y = np.zeros_like(x)
    x[:4, 15, 4:28] = 0.0  # a dark line in half the crops, inside a weak square label
    y[:4, 8:24, 4:28] = 1.0
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, None, 1)), keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=losses.get_loss("bce_dice_peak"))
    before = float(losses.peak_loss(y, model.predict(x, verbose=0)))
    history = model.fit(x, y, batch_size=4, epochs=20, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    assert float(losses.peak_loss(y, model.predict(x, verbose=0))) < before


def test_dice_iou_by_hand():
    mask = np.zeros((4, 4))
    mask[0, :] = 1  # 4 pixels
    prob = np.zeros((4, 4))
    prob[0, :2] = 0.9  # 2 hits
    prob[1, :2] = 0.6  # 2 false positives at 0.5, none at 0.75
    dice, iou = dice_iou(prob, mask, 0.5)
    assert dice == pytest.approx(2 * 2 / (4 + 4), abs=1e-5) and iou == pytest.approx(2 / 6, abs=1e-5)
    dice, iou = dice_iou(prob, mask, 0.75)
    assert dice == pytest.approx(4 / 6, abs=1e-5) and iou == pytest.approx(2 / 4, abs=1e-5)
    assert dice_iou(np.zeros((4, 4)), np.zeros((4, 4)), 0.5) == (1.0, 1.0)


def test_minimum_area_rule():
    def decided(prob: np.ndarray, min_area: int) -> bool:
        return SegmentationScores(0.5, min_area).add(prob, np.zeros_like(prob))["predicted_defective"]

    prob = np.zeros((20, 20))
    prob[2:5, 2:5] = 0.9  # 9 px
    prob[10:13, 10:13] = 0.9  # 9 px, separate: neither region reaches 16
    assert not decided(prob, 16)
    assert decided(prob, 9)
    prob[5, 2:5] = 0.9
    prob[6:10, 4] = 0.9  # joins the two squares diagonally into one 16+ px region
    prob[9, 4:10] = 0.9
    assert decided(prob, 16)


def test_the_line_mask_is_scored_without_the_regions_the_line_drops():
    """``dice_line`` scores the mask the line emits (regions of at least the minimum area), the
    published Dice every pixel above the threshold: a speck costs the one, not the other."""
    scores = SegmentationScores(threshold=0.5, min_defect_area=9)
    label = np.zeros((20, 20))
    label[2:8, 2:8] = 1  # 36 px
    found = label.copy()
    found[15:17, 15:17] = 0.9  # a 4 px speck beside the found defect: the line drops it
    speck = np.zeros((20, 20))
    speck[15:17, 15:17] = 0.9
    small = np.zeros((20, 20))
    small[0:2, 0:2] = 1  # a 4 px defect, found exactly, but below the minimum area
    alarm = np.zeros((20, 20))
    alarm[10:14, 10:14] = 0.9  # a 16 px false region: kept
    rows = [
        scores.add(found, label),
        scores.add(speck, np.zeros((20, 20))),
        scores.add(small, small),
        scores.add(alarm, np.zeros((20, 20))),
    ]
    assert [r["dice@0.5"] for r in rows] == pytest.approx([72 / 76, 0, 1, 0], abs=1e-4)
    assert [r["dice_line"] for r in rows] == pytest.approx([1, 1, 0, 0], abs=1e-4)
    assert [r["iou_line"] for r in rows] == pytest.approx([1, 1, 0, 0], abs=1e-4)
    o = scores.summary()["overall"]
    assert o["dice"]["0.5"] == pytest.approx((72 / 76 + 1) / 2, abs=1e-4)
    assert o["dice_line"] == pytest.approx(0.5, abs=1e-4)
    assert o["dice_all_images"]["0.5"] == pytest.approx((72 / 76 + 1) / 4, abs=1e-4)
    assert o["dice_line_all_images"] == pytest.approx(0.5, abs=1e-4)
    assert "the line's mask (regions >= 9 px) @0.5: Dice 0.5000 on defective images, 0.5000 on all" in (
        format_table(scores.summary())
    )


def test_image_level_rates_per_class():
    scores = SegmentationScores(threshold=0.5, min_defect_area=4)
    hit = np.zeros((8, 8))
    hit[:3, :3] = 1
    miss = np.zeros((8, 8))
    # class 1: two defective images (one found), one clean image (correct)
    scores.add(hit, hit, class_id=1)
    scores.add(miss, hit, class_id=1)
    scores.add(miss, miss, class_id=1)
    # class 2: one clean image with a false alarm
    scores.add(hit, miss, class_id=2)
    summary = scores.summary()
    c1, c2, overall = summary["per_class"]["1"], summary["per_class"]["2"], summary["overall"]
    assert (c1["tp"], c1["fn"], c1["tn"], c1["fp"]) == (1, 1, 1, 0)
    assert c1["tpr"] == 0.5 and c1["tnr"] == 1.0
    assert c2["tpr"] is None and c2["tnr"] == 0.0
    assert overall["tnr"] == 0.5 and overall["accuracy"] == 0.5
    # Dice over defective images: (1 + ~0) / 2; over all images the clean correct one adds a 1
    assert c1["dice"]["0.5"] == pytest.approx(0.5, abs=1e-4)
    assert c1["dice_all_images"]["0.5"] == pytest.approx(2 / 3, abs=1e-4)
    # split-level pixel counts. Class 1: tp 9, fn 9, fp 0 over 3 x 64 pixels (tn 174)
    assert c1["pixel_dice"]["0.5"] == pytest.approx(18 / 27)
    assert c1["dsc_2class"]["0.5"] == pytest.approx((18 / 27 + 348 / 357) / 2)
    assert c1["miou_2class"]["0.5"] == pytest.approx((9 / 18 + 174 / 183) / 2)
    # class 2: only a false alarm (fp 9, tn 55): the defect class scores 0, background 110/119
    assert c2["pixel_dice"]["0.5"] == 0.0 and c2["dsc_2class"]["0.5"] == pytest.approx(110 / 238)
    assert overall["pixel_dice"]["0.5"] == pytest.approx(18 / 36)
    table = format_table(summary)
    assert "     1 " in table and "   all " in table and "50.0%" in table


def test_image_auroc_ranks_defective_against_clean_images_apart_from_the_rule():
    # the minimum area (100 px) catches nothing, yet the regions separate the images well:
    # the AUROC says what a better area could do, the TPR only what this one does
    scores = SegmentationScores(threshold=0.5, min_defect_area=100)

    def blob(side: int, peak: float = 0.9) -> np.ndarray:
        prob = np.zeros((16, 16), np.float32)
        prob[:side, :side] = peak
        return prob

    label = np.zeros((16, 16))
    label[:4, :4] = 1
    for side in (6, 5, 3):  # defective images: largest regions of 36, 25 and 9 px
        scores.add(blob(side), label, class_id=1)
    for side, peak in ((4, 0.95), (2, 0.9), (0, 0.9)):  # clean: 16, 4 and no px
        scores.add(blob(side, peak), np.zeros((16, 16)), class_id=1)
    summary = scores.summary()
    assert summary["overall"]["tpr"] == 0.0
    # 9 defective/clean pairs: the 9 px defect ranks below the 16 px clean region, the rest above
    assert summary["overall"]["image_auroc"]["largest_region"] == pytest.approx(8 / 9)
    # by peak: 0.9 against 0.95 (below), 0.9 (tie, half) and 0 (above), for each defect
    assert summary["overall"]["image_auroc"]["peak"] == pytest.approx(3 * 1.5 / 9)
    assert summary["per_class"]["1"]["image_auroc"]["largest_region"] == pytest.approx(8 / 9)
    table = format_table(summary)
    assert " 0.889" in table
    assert "image AUROC (no rule): largest region @0.5 0.889, peak probability 0.500" in table
    # without both kinds of image there is nothing to rank
    only = SegmentationScores(threshold=0.5)
    only.add(blob(4), label)
    assert only.summary()["overall"]["image_auroc"] == {"largest_region": None, "peak": None}
