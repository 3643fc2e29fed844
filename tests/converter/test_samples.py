"""The TF-free validation image reader: DAGM2007 and images/+masks/ layouts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from converter.samples import SampleError, find_pairs, load_gate_and_calibration, load_samples


def _dagm(root, cls=1, count=6, size=32):
    test = root / f"Class{cls}" / "Test"
    (test / "Label").mkdir(parents=True)
    for i in range(count):
        image = np.full((size, size), 100 + i, np.uint8)
        cv2.imwrite(str(test / f"{i:04d}.PNG"), image)
        if i % 3 == 0:
            mask = np.zeros((size, size), np.uint8)
            mask[4:10, 4:10] = 255
            cv2.imwrite(str(test / "Label" / f"{i:04d}_label.PNG"), mask)
    return root


def test_dagm_layout_reads_labels_and_resizes(tmp_path):
    root = _dagm(tmp_path)
    _dagm(tmp_path, cls=2, count=2)
    assert len(find_pairs(root, classes=[1])) == 6
    assert len(find_pairs(root)) == 8
    samples = load_samples(root, 16, 16, 1, limit=4, classes=[1])
    assert samples.images.shape == (4, 16, 16, 1) and samples.images.dtype == np.uint8
    # defective and clean images alternate, so the gate always sees defects
    assert [bool(m.any()) for m in samples.masks] == [True, False, True, False]
    assert samples.masks[0, 2:5, 2:5].all()  # 4:10 of 32 -> 2:5 of 16


def test_class_folder_and_plain_layout(tmp_path):
    root = _dagm(tmp_path / "d")
    assert len(find_pairs(root / "Class1")) == 6
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    (plain / "masks").mkdir()
    for i in range(3):
        cv2.imwrite(str(plain / "images" / f"a{i}.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(plain / "masks" / "a1_mask.png"), np.full((8, 8), 255, np.uint8))
    pairs = find_pairs(plain)
    assert [m is not None for _, m in pairs] == [False, True, False]


def test_gate_and_calibration_sets_are_disjoint(tmp_path):
    root = _dagm(tmp_path, count=12)
    gate, calib = load_gate_and_calibration(root, 32, 32, 1, gate=4, calibration=4)
    assert not set(gate.names) & set(calib.names)
    assert gate.masks.any((1, 2)).any() and calib.masks.any((1, 2)).any()


def test_missing_or_empty(tmp_path):
    with pytest.raises(SampleError, match="data set folder not found"):
        find_pairs(tmp_path / "nope")
    with pytest.raises(SampleError, match="no images found"):
        find_pairs(tmp_path)
