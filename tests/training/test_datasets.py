"""Loaders against small fixtures in the real layouts, and the Severstal run-length encoding."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import needs_tensorflow
from training.datasets import DatasetError, LabelsTxtError, load_dagm, load_folders, load_severstal
from training.datasets.rle import rle_decode, rle_encode
from training.datasets.severstal import HEIGHT, WIDTH


def test_dagm_loader_reads_labels_and_selects_classes(dagm_root):
    train, test = load_dagm(dagm_root, [2])
    assert len(train) == 8 and len(test) == 4
    assert {s.class_id for s in train + test} == {2}
    for s in train + test:
        assert s.defective == bool(s.mask)
        if s.defective:
            assert Path(s.mask).name == Path(s.image).stem + "_label.PNG"
    only_def, test2 = load_dagm(dagm_root, [1, 2], only_defective_images=True)
    assert len(only_def) == 8 and all(s.defective for s in only_def)
    assert len(test2) == 8  # the filter applies to training only


def test_dagm_errors_name_the_path(dagm_root, tmp_path):
    # the fix names the classes that are there, Class10 after Class2 (a recipe's six classes
    # pointed at a set of three is the usual way to get here)
    ten = tmp_path / "ten"
    shutil.copytree(dagm_root, ten)
    shutil.copytree(dagm_root / "Class1", ten / "Class10")
    with pytest.raises(
        DatasetError,
        match=r"Class9 does not exist; found: Class1, Class2, Class10; "
        r'use those: --set "dataset.classes=\[1,2,10\]"',
    ):
        load_dagm(ten, [9])
    with pytest.raises(DatasetError, match=r"DAGM root .*missing"):
        load_dagm(tmp_path / "missing", [1])
    broken = tmp_path / "broken"
    shutil.copytree(dagm_root / "Class1", broken / "Class1")
    label = next((broken / "Class1" / "Test" / "Label").glob("*_label.PNG"))
    label.unlink()
    with pytest.raises(DatasetError, match=f"{label.name} is missing|names {label.name}"):
        load_dagm(broken, [1])


def write_dagm_split(split_dir: Path, defective: tuple[int, ...], n: int = 4) -> Path:
    """``NNNN.PNG`` images 1..n, label files for ``defective`` and an agreeing Labels.txt; returns it."""
    label_dir = split_dir / "Label"
    label_dir.mkdir(parents=True)
    lines = [str(n)]
    for i in range(1, n + 1):
        cv2.imwrite(str(split_dir / f"{i:04d}.PNG"), np.full((32, 32), 90 + i, np.uint8))
        if i in defective:
            mask = np.zeros((32, 32), np.uint8)
            mask[8:16, 8:16] = 255
            cv2.imwrite(str(label_dir / f"{i:04d}_label.PNG"), mask)
            lines.append(f"{i}\t1\t{i:04d}.PNG\t0\t{i:04d}_label.PNG")
        else:
            lines.append(f"{i}\t0\t{i:04d}.PNG\t0\t0")
    labels = label_dir / "Labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    return labels


@pytest.fixture
def dagm_class1(tmp_path: Path) -> Path:
    """Class1 with Train (0001, 0002 defective) and Test (0001 defective) whose Labels.txt agree."""
    write_dagm_split(tmp_path / "Class1" / "Train", defective=(1, 2))
    write_dagm_split(tmp_path / "Class1" / "Test", defective=(1,))
    return tmp_path


def test_dagm_agreeing_labels_txt_loads_without_warnings(dagm_class1, caplog):
    train, test = load_dagm(dagm_class1, [1])
    assert [s.defective for s in train] == [True, True, False, False]
    assert [s.defective for s in test] == [True, False, False, False]
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "--lenient" in text
    return text


def test_dagm_clean_line_with_a_label_file_is_an_error_or_with_lenient_a_warning(dagm_class1, caplog):
    train_dir = dagm_class1 / "Class1" / "Train"
    # line 4 of Labels.txt says 0003.PNG is clean, but someone drew a label for it
    shutil.copy(train_dir / "Label" / "0001_label.PNG", train_dir / "Label" / "0003_label.PNG")
    with pytest.raises(LabelsTxtError) as exc:
        load_dagm(dagm_class1, [1])
    text = _one_line(exc)
    assert f"{train_dir / 'Label' / 'Labels.txt'}:4 says 0003.PNG is clean" in text
    assert f"its label file {train_dir / 'Label' / '0003_label.PNG'} exists" in text

    train, _ = load_dagm(dagm_class1, [1], lenient=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "Labels.txt:4 says 0003.PNG is clean" in warnings[0]
    assert "label used" in warnings[0]
    assert [s.defective for s in train] == [True, True, True, False]  # the drawn label is kept


def test_dagm_listed_image_or_label_that_does_not_exist(dagm_class1, caplog):
    test_dir = dagm_class1 / "Class1" / "Test"
    (test_dir / "0003.PNG").unlink()
    with pytest.raises(LabelsTxtError) as exc:
        load_dagm(dagm_class1, [1])
    text = _one_line(exc)
    assert f"Labels.txt:4 lists 0003.PNG, but {test_dir / '0003.PNG'} does not exist" in text

    (test_dir / "Label" / "0001_label.PNG").unlink()
    with pytest.raises(LabelsTxtError) as exc:
        load_dagm(dagm_class1, [1])
    text = _one_line(exc)
    # both problems are counted; the first line's is the one named
    assert "Labels.txt:2 names 0001_label.PNG for 0001.PNG, but" in text and "(1 more in this" in text

    _, test = load_dagm(dagm_class1, [1], lenient=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and "(image left out)" in warnings[0] and "does not exist" in warnings[1]
    # the defective image without its label is left out, not trained on as clean
    assert [Path(s.image).name for s in test] == ["0002.PNG", "0004.PNG"]
    assert not any(s.defective for s in test)


def test_dagm_lenient_sums_up_many_problems(tmp_path, caplog):
    labels = write_dagm_split(tmp_path / "Class1" / "Train", defective=(), n=12)
    write_dagm_split(tmp_path / "Class1" / "Test", defective=())
    for i in range(3, 12):
        (labels.parent.parent / f"{i:04d}.PNG").unlink()
    with pytest.raises(LabelsTxtError, match=r"Labels.txt:4 lists 0003.PNG, .*\(8 more in this Labels.txt\)"):
        load_dagm(tmp_path, [1])
    train, _ = load_dagm(tmp_path, [1], lenient=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(train) == 3 and len(warnings) == 6
    assert warnings[-1].endswith("4 more disagreements with the files (9 in all), not listed one by one")


def test_rle_decode_matches_a_hand_computed_mask():
    # 3 rows x 4 columns; pixels are numbered down the columns from 1
    expected = np.array([[1, 0, 1, 0], [1, 0, 1, 0], [0, 1, 0, 0]], np.uint8)
    assert np.array_equal(rle_decode("1 2 6 3", 3, 4), expected)
    assert rle_encode(expected) == "1 2 6 3"
    assert rle_encode(np.zeros((3, 4))) == ""
    full = np.ones((2, 2), np.uint8)
    assert rle_encode(full) == "1 4" and np.array_equal(rle_decode("1 4", 2, 2), full)


def test_rle_round_trip_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = (rng.random((17, 23)) < 0.3).astype(np.uint8)
        assert np.array_equal(rle_decode(rle_encode(mask), 17, 23), mask)


@pytest.mark.parametrize(
    ("text", "error"),
    [("1 2 3", "odd number"), ("1 x", "integers"), ("0 2", "1-indexed"), ("11 5", "past pixel 12")],
)
def test_rle_rejects_malformed_text(text, error):
    with pytest.raises(DatasetError, match=error):
        rle_decode(text, 3, 4, where="train.csv:2")


def _write_severstal(root: Path) -> dict[str, np.ndarray]:
    (root / "train_images").mkdir(parents=True)
    masks = {}
    rows = ["ImageId,ClassId,EncodedPixels"]
    for i in range(4):
        name = f"img{i}.jpg"
        cv2.imwrite(str(root / "train_images" / name), np.full((HEIGHT, WIDTH), 100 + i, np.uint8))
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        if i < 3:
            mask[20 + i : 60, 100 * (i + 1) : 100 * (i + 1) + 40] = 1
            rows.append(f"{name},{i + 1},{rle_encode(mask)}")
        masks[name] = mask
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return masks


@needs_tensorflow
def test_severstal_loader_and_pipeline_decode_the_runs(tmp_path):
    import tensorflow as tf

    from training.config import load_config
    from training.pipeline import decoded_dataset

    masks = _write_severstal(tmp_path)
    train, val = load_severstal(tmp_path, classes=[1, 2], train_fraction=0.5, seed=0)
    samples = train + val
    assert len(train) == 2 and len(val) == 2
    by_name = {Path(s.image).name: s for s in samples}
    assert by_name["img0.jpg"].defective and by_name["img1.jpg"].defective
    assert not by_name["img2.jpg"].defective  # class 3 is not selected
    assert not by_name["img3.jpg"].defective and by_name["img3.jpg"].rle == ""
    cfg = load_config({"dataset": {"kind": "severstal", "root": str(tmp_path)}})
    for (image, mask, _), sample in zip(
        decoded_dataset(samples, cfg["input"], None, False), samples, strict=True
    ):
        assert image.shape == (HEIGHT, WIDTH, 1) and image.dtype == tf.uint8
        expected = masks[Path(sample.image).name] if sample.defective else np.zeros((HEIGHT, WIDTH), np.uint8)
        assert np.array_equal(mask.numpy()[..., 0], expected)


def test_severstal_errors_name_the_file(tmp_path):
    _write_severstal(tmp_path)
    with pytest.raises(DatasetError, match=r"class 5 is unknown"):
        load_severstal(tmp_path, classes=[5])
    (tmp_path / "train.csv").write_text("Image,Class,Pixels\n")
    with pytest.raises(DatasetError, match=r"train.csv: header is Image,Class,Pixels; expected ImageId"):
        load_severstal(tmp_path, classes=[1])
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nimg0.jpg,1,1 2 3\n")
    with pytest.raises(DatasetError, match=r"train.csv:2: .*odd number"):
        load_severstal(tmp_path, classes=[1])
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nnope.jpg,1,1 2\n")
    with pytest.raises(DatasetError, match=r"missing from .*nope\.jpg"):
        load_severstal(tmp_path, classes=[1])


def test_folder_layouts(tmp_path):
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    (flat / "masks").mkdir()
    for i in range(4):
        cv2.imwrite(str(flat / "images" / f"a{i}.png"), np.full((32, 32), 80, np.uint8))
        mask = np.zeros((32, 32), np.uint8)
        mask[: 4 * i, :] = 255
        cv2.imwrite(str(flat / "masks" / f"a{i}.png"), mask)
    train, val = load_folders(flat, train_fraction=0.75, seed=1)
    assert len(train) == 3 and len(val) == 1
    assert sorted(s.defective for s in train + val) == [False, True, True, True]

    per_id = tmp_path / "per_id"
    for name in ("x1", "x2"):
        (per_id / "train" / name / "images").mkdir(parents=True)
        (per_id / "train" / name / "masks").mkdir(parents=True)
        cv2.imwrite(str(per_id / "train" / name / "images" / f"{name}.png"), np.zeros((32, 32), np.uint8))
        cv2.imwrite(str(per_id / "train" / name / "masks" / f"{name}.png"), np.full((32, 32), 255, np.uint8))
    train, val = load_folders(per_id, train_fraction=0.5)
    assert len(train) == 1 and len(val) == 1 and all(s.defective for s in train + val)

    (flat / "masks" / "a2.png").unlink()
    with pytest.raises(DatasetError, match=r"no mask for .*a2.png; expected .*masks/a2.png"):
        load_folders(flat)
    with pytest.raises(DatasetError, match="neither images/"):
        load_folders(tmp_path)


def test_synthetic_set_is_reused_only_when_made_by_the_same_generator(tmp_path, monkeypatch):
    import json

    from converter.synthetic import GENERATOR_VERSION
    from training.datasets import SYNTHETIC_MARKER, default_synthetic_root, ensure_synthetic

    params = {"n_train": 2, "n_test": 2, "size": 64, "defect_fraction": 0.5}
    root = ensure_synthetic(tmp_path / "set", [1], params, seed=3)
    image = root / "Class1" / "Train" / "0001.PNG"
    written = image.stat().st_mtime_ns
    assert ensure_synthetic(root, [1], params, seed=3) == root and image.stat().st_mtime_ns == written
    # a set from an older generator (same seed, other images) is refused, not silently reused
    marker = root / SYNTHETIC_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "generator": GENERATOR_VERSION - 1}))
    with pytest.raises(DatasetError, match=r"older generator.*delete that folder"):
        ensure_synthetic(root, [1], params, seed=3)
    other = ensure_synthetic(tmp_path / "set2", [1], params, seed=3)
    with pytest.raises(DatasetError, match="other settings"):
        ensure_synthetic(other, [1], {**params, "n_train": 3}, seed=3)
    # the default cache folder follows the generator too
    before = default_synthetic_root([1], params, 3)
    monkeypatch.setattr("converter.synthetic.GENERATOR_VERSION", GENERATOR_VERSION + 1)
    assert default_synthetic_root([1], params, 3) != before
