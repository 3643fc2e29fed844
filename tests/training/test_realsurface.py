"""The real-surface validation set: real photographs, drawn defects, the DAGM2007 layout, one command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from converter.synthetic import write_dagm
from edge.cli import main
from tests.conftest import requires
from training.datasets import load_dagm
from training.datasets import realsurface as rs

#: the set is cut from scikit-image's photographs (the `train` extra)
needs_skimage = requires("skimage")


@pytest.fixture(scope="module")
def realset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes (brick, grass) of 128 px images, 8 train and 4 test each, made by the one command."""
    root = tmp_path_factory.mktemp("real") / "set"
    argv = ["realsurface", str(root), "--textures", "brick", "grass", "--n-train", "8", "--n-test", "4"]
    assert main([*argv, "--size", "128", "--defect-fraction", "0.5", "--seed", "3"]) == 0
    return root


def _decode(path: str) -> np.ndarray:
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


@needs_skimage
def test_the_command_writes_a_set_the_dagm_loader_reads(realset: Path):
    train, test = load_dagm(realset, [1, 2])
    assert len(train) == 16 and len(test) == 8
    for samples, per_class in ((train, 8), (test, 4)):
        for class_id in (1, 2):
            mine = [s for s in samples if s.class_id == class_id]
            # the defect share is exact per class and split, so small sets hold both kinds
            assert len(mine) == per_class and sum(s.defective for s in mine) == per_class // 2
    for sample in train + test:
        image = _decode(sample.image)
        assert image.dtype == np.uint8 and image.shape == (128, 128)
        if sample.defective:
            label = _decode(sample.mask)
            assert label.shape == image.shape and set(np.unique(label)) == {0, 255}
            assert 20 < (label > 0).sum() < 0.6 * label.size
        else:
            assert not (Path(sample.image).parent / "Label" / f"{Path(sample.image).stem}_label.PNG").exists()
    marker = json.loads((realset / rs.MARKER).read_text())
    assert marker["classes"]["1"]["texture"] == "brick" and marker["classes"]["2"]["texture"] == "grass"
    assert marker["labels"] == "ellipse" and marker["seed"] == 3
    lines = (realset / "Class2" / "Test" / "Label" / "Labels.txt").read_text().splitlines()
    assert lines[0] == "4" and sum(line.split("\t")[1] == "1" for line in lines[1:]) == 2


@needs_skimage
def test_same_seed_writes_the_same_bytes_and_another_seed_does_not(tmp_path: Path):
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    sets = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        rs.write_realsurface(tmp_path / name, ("gravel",), n_train=3, n_test=2, size=64, seed=seed)
        sets[name] = files(tmp_path / name)
    assert sets["a"] == sets["b"]
    # the photographs, not the labels: which images are defective is shuffled by the seed too
    images_a = {k: v for k, v in sets["a"].items() if k.endswith(".PNG") and "Label" not in k}
    images_c = {k: v for k, v in sets["c"].items() if k.endswith(".PNG") and "Label" not in k}
    assert images_a.keys() == images_c.keys() and all(images_a[k] != images_c[k] for k in images_a)


def _best_match(patch: np.ndarray, photo: np.ndarray, step: float, angle_deg: float) -> float:
    """Highest normalized correlation of ``patch`` anywhere in ``photo`` at any quarter turn and flip."""
    small = cv2.resize(photo, None, fx=1 / step, fy=1 / step, interpolation=cv2.INTER_AREA)
    best = -1.0
    for flipped in (small, small[:, ::-1]):
        for turns in range(4):
            view = np.ascontiguousarray(np.rot90(flipped, turns))
            for sign in (-1, 1):
                h, w = view.shape
                rot = cv2.getRotationMatrix2D((w / 2, h / 2), sign * angle_deg, 1.0)
                turned = cv2.warpAffine(view, rot, (w, h), flags=cv2.INTER_LINEAR)
                score = cv2.matchTemplate(turned, patch, cv2.TM_CCOEFF_NORMED).max()
                best = max(best, float(score))
    return best


@needs_skimage
@pytest.mark.parametrize("texture", ["brick", "gravel"])
def test_clean_images_are_views_of_the_named_photograph(texture: str):
    """A patch of a clean frame is found in its own photograph, and not in another texture's."""
    other = "grass" if texture == "brick" else "brick"
    for seed in range(3):
        image, label, info = rs.render(np.random.default_rng(seed), texture, 256)
        assert not label.any() and not info["defective"]
        patch = image[96:160, 96:160].astype(np.float32)
        step = info["window"] / 256
        own = _best_match(patch, rs.photograph(texture), step, info["angle_deg"])
        alien = _best_match(patch, rs.photograph(other), step, info["angle_deg"])
        assert own > 0.8 and alien < 0.6, (seed, own, alien)
        # a real surface: texture everywhere, not a flat field (the gain keeps at least 0.7x the photo's)
        assert image.std() > 0.35 * rs.photograph(texture).std()


@needs_skimage
@pytest.mark.parametrize("kind", rs.DEFECT_KINDS)
def test_the_pixel_mask_is_where_the_defect_was_drawn(kind: str):
    for seed in range(4):
        rng = np.random.default_rng(seed)
        surface = cv2.resize(rs.photograph("gravel"), (128, 128), interpolation=cv2.INTER_AREA)
        drawn, mask, info = rs.draw_defect(rng, surface, kind)
        assert info["kind"] == kind and mask.dtype == bool and mask.sum() >= 6
        change = np.abs(drawn - surface)
        assert change[mask].mean() > 10 * max(change[~mask].mean(), 0.01)
        near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert change[near].sum() >= 0.98 * change.sum()


@needs_skimage
def test_label_modes_share_the_image_and_the_ellipse_covers_the_pixels():
    for seed in range(6):
        img_e, ellipse, info_e = rs.render(np.random.default_rng(seed), "moon", 128, True, labels="ellipse")
        img_p, pixels, info_p = rs.render(np.random.default_rng(seed), "moon", 128, True, labels="pixel")
        assert np.array_equal(img_e, img_p) and info_e == info_p
        assert pixels.any() and not (pixels > ellipse).any()
        # the weak label is larger than the defect, as DAGM's are
        assert (ellipse > 0).sum() > (pixels > 0).sum()


@needs_skimage
def test_defects_vary_in_kind_polarity_and_contrast():
    infos = [rs.render(np.random.default_rng(i), "grass", 64, True)[2] for i in range(60)]
    assert {info["kind"] for info in infos} == set(rs.DEFECT_KINDS)
    assert {info["dark"] for info in infos} == {True, False}
    contrasts = [info["contrast"] for info in infos]
    assert min(contrasts) < 0.8 and max(contrasts) > 2.0  # some subtle, some plain
    assert len({info["camera"]["gain"] for info in infos}) >= 50  # rounded to 3 decimals in the info


@needs_skimage
def test_not_the_synthetic_generator(tmp_path: Path):
    """The same seed and size through the synthetic writer gives other images: this set is its own."""
    rs.write_realsurface(tmp_path / "real", ("brick",), n_train=2, n_test=1, size=64, seed=0)
    write_dagm(tmp_path / "synth", classes=(1,), n_train=2, n_test=1, size=64, seed=0)
    for name in ("0001.PNG", "0002.PNG"):
        real = _decode(str(tmp_path / "real" / "Class1" / "Train" / name))
        synth = _decode(str(tmp_path / "synth" / "Class1" / "Train" / name))
        assert not np.array_equal(real, synth)


@needs_skimage
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--defect-fraction", "1.5"], "defect fraction must be within [0, 1], got 1.5"),
        (["--size", "32"], "at least 64 px, got 32"),
        (["--n-test", "0"], "at least one image"),
    ],
)
def test_bad_arguments_get_one_line(tmp_path: Path, capsys, args: list[str], words: str):
    assert main(["realsurface", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert not (tmp_path / "out").exists()


def test_unknown_textures_are_refused_naming_the_allowed_ones(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        main(["realsurface", str(tmp_path / "out"), "--textures", "marble"])
    assert "invalid choice: 'marble'" in capsys.readouterr().err
    with pytest.raises(rs.RealSurfaceError, match="allowed: brick, grass, gravel, moon"):
        rs.write_realsurface(tmp_path / "out", ("marble",), size=64)
    assert tuple(rs.TEXTURES) == ("brick", "grass", "gravel", "moon")  # the CLI's choices spell these


@needs_skimage
def test_a_used_folder_and_a_missing_scikit_image_are_refused(tmp_path: Path, capsys, monkeypatch):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    assert main(["realsurface", str(tmp_path / "used"), "--size", "64", "--n-train", "1"]) == 2
    assert "is not empty; choose a new folder" in capsys.readouterr().err
    rs.photograph.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage", None)  # what an install without scikit-image sees
    try:
        assert main(["realsurface", str(tmp_path / "new"), "--size", "64"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "scikit-image is not installed" in err[0] and "pip install" in err[0]
    finally:
        rs.photograph.cache_clear()


@needs_skimage
def test_the_set_records_each_defect_under_its_image(realset: Path):
    marker = json.loads((realset / rs.MARKER).read_text())
    for class_id in ("1", "2"):
        for split in ("Train", "Test"):
            recorded = marker["classes"][class_id][split]["defects"]
            lines = (realset / f"Class{class_id}" / split / "Label" / "Labels.txt").read_text().splitlines()
            defective = {line.split("\t")[2] for line in lines[1:] if line.split("\t")[1] == "1"}
            assert set(recorded) == defective  # the names of the defective images, and only them
            for info in recorded.values():
                assert info["kind"] in rs.DEFECT_KINDS and 0.5 <= info["contrast"] <= 3.0
                assert info["visibility"] >= 0 and isinstance(info["dark"], bool)


def test_visibility_measures_a_shift_and_a_smear_in_the_surroundings_spread():
    rng = np.random.default_rng(0)
    image = rng.normal(120, 10, (256, 256))
    mask = np.zeros((256, 256), bool)
    mask[100:140, 100:140] = True
    shifted = image.copy()
    shifted[mask] -= 15  # 1.5 standard deviations darker
    assert rs.visibility(shifted, mask) == pytest.approx(1.5, abs=0.1)
    smeared = image.copy()
    smeared[mask] = 120 + (smeared[mask] - 120) / 4  # the same mean, a quarter of the spread
    assert rs.visibility(smeared, mask) == pytest.approx(np.log(4), abs=0.1)
    assert rs.visibility(image, mask) < 0.1  # nothing drawn


def test_the_breakdown_groups_defective_images_by_kind_and_visibility(tmp_path: Path):
    defects = {
        "0001.PNG": {"kind": "scratch", "visibility": 0.3},
        "0002.PNG": {"kind": "scratch", "visibility": 1.2},
        "0003.PNG": {"kind": "blob", "visibility": 2.5},
    }
    marker = {"classes": {"2": {"Test": {"defects": defects}}}}
    (tmp_path / rs.MARKER).write_text(json.dumps(marker))

    def row(name: str, found: bool, dice: float | None) -> dict:
        image = str(tmp_path / "Class2" / "Test" / name)
        return {"image": image, "defective": dice is not None, "predicted_defective": found, "dice": dice}

    rows = [row("0001.PNG", False, 0.1), row("0002.PNG", True, 0.7), row("0003.PNG", True, 0.9)]
    rows.append(row("0004.PNG", True, None))  # a clean image (a false alarm) is in no group
    groups = rs.by_defect(rows, tmp_path)
    assert list(groups) == ["scratch", "blob", "visibility 0-0.5", "visibility 1-2", "visibility >= 2"]
    assert groups["scratch"] == {"images": 2, "found": 1, "tpr": 0.5, "dice": pytest.approx(0.4)}
    assert groups["visibility 0-0.5"]["found"] == 0 and groups["visibility >= 2"]["dice"] == 0.9
    assert "scratch" in rs.format_by_defect(groups) and "50.0 %" in rs.format_by_defect(groups)
    assert rs.by_defect(rows, tmp_path / "elsewhere") is None  # a set that records no defects
