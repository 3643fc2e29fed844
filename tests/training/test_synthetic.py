"""The synthetic DAGM-like generator: API, determinism, labels and the DAGM2007 layout on disk."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from converter import synthetic
from converter.errors import LinesideError


def test_families_and_classes_cover_the_spec():
    assert len(synthetic.FAMILIES) >= 6
    assert synthetic.DEFECT_KINDS == ("scratch", "spot", "stain", "crack", "missing_print")
    used_kinds = set()
    for class_id in range(1, 11):
        family, kinds = synthetic.class_spec(class_id)
        assert family in synthetic.FAMILIES
        assert kinds and set(kinds) <= set(synthetic.DEFECT_KINDS)
        used_kinds |= set(kinds)
    assert used_kinds == set(synthetic.DEFECT_KINDS)
    with pytest.raises(LinesideError, match=r"allowed: 1\.\.10"):
        synthetic.class_spec(11)


@pytest.mark.parametrize("kind", synthetic.DEFECT_KINDS)
@pytest.mark.parametrize("class_id", [1, 3, 4, 6, 7])
def test_render_defect_has_weak_elliptical_label(class_id: int, kind: str):
    image, label, info = synthetic.render(np.random.default_rng(1), 128, class_id, defect=kind)
    assert image.dtype == np.uint8 and image.shape == (128, 128)
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 255}
    assert info["defective"] and info["kind"] == kind
    x, y, w, h = info["bbox"]
    assert label[y : y + h, x : x + w].any() and not label[:y].any() and not label[y + h :].any()
    # one filled convex blob: its area matches its convex hull (an ellipse, not scattered pixels)
    contours, _ = cv2.findContours(label, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    assert len(contours) == 1
    hull_area = cv2.contourArea(cv2.convexHull(contours[0]))
    assert cv2.contourArea(contours[0]) == pytest.approx(hull_area, rel=0.05)


def test_defect_changes_the_pixels_under_its_label():
    clean, _, _ = synthetic.render(np.random.default_rng(5), 256, 1, defective=False)
    image, label, _ = synthetic.render(np.random.default_rng(5), 256, 1, defect="spot")
    inside = label > 0
    diff = np.abs(image.astype(int) - clean.astype(int))
    # same rng stream up to the defect: the texture is shared, the defect only changes the labelled area
    assert diff[inside].mean() > 5 * max(diff[~inside].mean(), 0.1)


def test_render_is_deterministic_and_clean_frames_have_empty_labels():
    a = synthetic.render(np.random.default_rng(42), (96, 160), 2, defective=True)
    b = synthetic.render(np.random.default_rng(42), (96, 160), 2, defective=True)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    image, label, info = synthetic.render(np.random.default_rng(0), 64, 5)
    assert image.shape == (64, 64) and not label.any() and info["kind"] is None and not info["defective"]


def test_render_rejects_bad_arguments():
    with pytest.raises(LinesideError, match="allowed: scratch"):
        synthetic.render(np.random.default_rng(0), 64, 1, defect="dent")
    with pytest.raises(LinesideError, match="at least 32x32"):
        synthetic.render(np.random.default_rng(0), 16, 1)


def test_write_dagm_layout(dagm_root):
    for class_id in (1, 2):
        for split, n in (("Train", 8), ("Test", 4)):
            split_dir = dagm_root / f"Class{class_id}" / split
            images = sorted(split_dir.glob("*.PNG"))
            assert [p.name for p in images] == [f"{i:04d}.PNG" for i in range(1, n + 1)]
            lines = (split_dir / "Label" / "Labels.txt").read_text().splitlines()
            assert lines[0] == str(n)
            rows = [line.split("\t") for line in lines[1:]]
            assert len(rows) == n
            for index, flag, name, zero, label_name in rows:
                assert name == f"{int(index):04d}.PNG" and zero == "0"
                label_path = split_dir / "Label" / f"{int(index):04d}_label.PNG"
                assert label_path.is_file() == (flag == "1")
                assert label_name == (label_path.name if flag == "1" else "0")
            assert sum(row[1] == "1" for row in rows) == n // 2
    assert cv2.imread(str(dagm_root / "Class1" / "Train" / "0001.PNG"), cv2.IMREAD_UNCHANGED).shape == (
        64,
        64,
    )


def test_streaks_are_as_strong_at_the_edges_as_in_the_middle():
    # cv2.blur reflects at the border, which made edge streaks ~1.4x stronger: a texture
    # change that a trained model flagged as a defect on clean brushed metal
    fine = np.random.default_rng(0).standard_normal((2048, 256)).astype(np.float32)
    streaks = synthetic._streaks(fine, 61)
    middle = streaks[:, 100:156].std()
    for edge in (streaks[:, :8], streaks[:, -8:]):
        assert abs(edge.std() / middle - 1) < 0.05
    # and the streaks are still 61-px box averages: a streak's neighbour differs by 2 of 61 samples
    assert np.corrcoef(streaks[:, 100], streaks[:, 101])[0, 1] > 0.95
