"""Image ops: gray conversion, ROI crop, resize, and the tiling round trip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from converter.errors import LinesideError
from edge.imageops import ImageOpsError, crop_roi, cut_tiles, join_tiles, plan_tiles, resize_to, to_gray


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_to_gray_matches_opencv_and_does_not_copy_gray(rng):
    bgr = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_gray(bgr), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    bgra = np.dstack([bgr, np.full((40, 60), 9, np.uint8)])
    np.testing.assert_array_equal(to_gray(bgra), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    gray = bgr[:, :, 0].copy()
    assert to_gray(gray) is gray
    assert np.shares_memory(to_gray(gray[:, :, None]), gray)
    with pytest.raises(ImageOpsError, match="uint8"):
        to_gray(gray.astype(np.float32))
    with pytest.raises(ImageOpsError, match="shape"):
        to_gray(np.zeros((4, 4, 2), np.uint8))


def test_crop_roi_is_a_view_and_refuses_out_of_bounds(rng):
    img = rng.integers(0, 256, (100, 200), dtype=np.uint8)
    crop = crop_roi(img, (10, 20, 30, 40))
    assert crop.shape == (40, 30)
    assert np.shares_memory(crop, img)
    np.testing.assert_array_equal(crop, img[20:60, 10:40])
    assert crop_roi(img, None) is img
    assert crop_roi(img, (0, 0, 200, 100)).shape == (100, 200)
    with pytest.raises(ImageOpsError, match=r"200x100 \(WxH\)") as info:
        crop_roi(img, (150, 0, 60, 10))
    assert isinstance(info.value, LinesideError)
    for bad in [(-1, 0, 10, 10), (0, 0, 0, 10), (0, 95, 10, 10), (1, 2, 3)]:
        with pytest.raises(ImageOpsError):
            crop_roi(img, bad)


def test_resize_to_picks_interpolation_and_skips_same_size():
    img = np.zeros((8, 8), np.uint8)
    img[:, ::2] = 255  # 1-px stripes: INTER_AREA averages them, nearest/linear would alias
    down = resize_to(img, (4, 4))
    assert down.shape == (4, 4)
    np.testing.assert_array_equal(down, cv2.resize(img, (4, 4), interpolation=cv2.INTER_AREA))
    assert np.all(np.abs(down.astype(int) - 128) <= 1)
    up = resize_to(img, (16, 20))
    assert up.shape == (16, 20)
    np.testing.assert_array_equal(up, cv2.resize(img, (20, 16), interpolation=cv2.INTER_LINEAR))
    assert resize_to(img, (8, 8)) is img
    color = np.zeros((10, 20, 3), np.uint8)
    assert resize_to(color, (5, 7)).shape == (5, 7, 3)
    with pytest.raises(ImageOpsError):
        resize_to(img, (0, 4))


def test_plan_tiles_severstal_strip():
    plan = plan_tiles(256, 1600, 256, 256)
    assert len(plan) == 7
    assert [x for _, x in plan] == [0, 256, 512, 768, 1024, 1280, 1344]
    assert all(y == 0 for y, _ in plan)


def test_plan_tiles_covers_with_minimal_overlap():
    cases = [(512, 512, 256, 256), (300, 700, 128, 256), (257, 1000, 256, 333), (64, 64, 64, 64)]
    for img_h, img_w, th, tw in cases:
        plan = plan_tiles(img_h, img_w, th, tw)
        assert len(plan) == -(-img_h // th) * -(-img_w // tw)
        cover = np.zeros((img_h, img_w), np.int32)
        for y, x in plan:
            assert 0 <= y <= img_h - th and 0 <= x <= img_w - tw
            cover[y : y + th, x : x + tw] += 1
        assert cover.min() >= 1
        assert plan == sorted(plan)  # row-major


def test_plan_tiles_refuses_image_smaller_than_tile():
    with pytest.raises(ImageOpsError, match="smaller than"):
        plan_tiles(200, 1600, 256, 256)
    with pytest.raises(ImageOpsError):
        plan_tiles(0, 10, 1, 1)


@pytest.mark.parametrize("shape", [(256, 1600), (300, 700), (256, 1600, 3)])
def test_cut_then_join_reproduces_the_image(rng, shape):
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    th, tw = (256, 256) if shape[0] == 256 else (128, 256)
    plan = plan_tiles(shape[0], shape[1], th, tw)
    tiles = cut_tiles(img, plan, th, tw)
    assert tiles.shape == (len(plan), th, tw, *shape[2:])
    assert tiles.dtype == np.uint8
    for tile, (y, x) in zip(tiles, plan, strict=True):
        np.testing.assert_array_equal(tile, img[y : y + th, x : x + tw])
    joined = join_tiles(tiles, plan, shape[0], shape[1])
    assert joined.dtype == np.uint8
    np.testing.assert_array_equal(joined, img)
    np.testing.assert_allclose(join_tiles(tiles, plan, shape[0], shape[1], reduce="mean"), img)


def test_cut_tiles_reuses_out_buffer(rng):
    img = rng.integers(0, 256, (256, 1600), dtype=np.uint8)
    plan = plan_tiles(256, 1600, 256, 256)
    buf = np.empty((7, 256, 256), np.uint8)
    assert cut_tiles(img, plan, 256, 256, out=buf) is buf
    with pytest.raises(ImageOpsError, match="out must be"):
        cut_tiles(img, plan, 256, 256, out=np.empty((6, 256, 256), np.uint8))
    with pytest.raises(ImageOpsError, match="leaves"):
        cut_tiles(img, [(0, 1400)], 256, 256)


def test_join_tiles_overlap_takes_max_and_keeps_nan():
    plan = plan_tiles(4, 6, 4, 4)  # x = 0, 2: columns 2-3 overlap
    assert plan == [(0, 0), (0, 2)]
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0] = 0.9  # left tile sure of a defect
    maps[1] = 0.1
    maps[1, 0, 3] = np.nan
    joined = join_tiles(maps, plan, 4, 6)
    assert joined.shape == (4, 6)
    np.testing.assert_allclose(joined[1:, :4], 0.9)  # overlap: max wins, not the last tile
    np.testing.assert_allclose(joined[:, 4:][~np.isnan(joined[:, 4:])], 0.1)
    assert np.isnan(joined[0, 5])
    mean = join_tiles(maps, plan, 4, 6, reduce="mean")
    np.testing.assert_allclose(mean[1, 2:4], 0.5)
    negative = join_tiles(np.full((2, 4, 4), -5.0, np.float32), plan, 4, 6)
    np.testing.assert_allclose(negative, -5.0)  # logits below zero survive the max
    with pytest.raises(ImageOpsError, match="reduce"):
        join_tiles(maps, plan, 4, 6, reduce="sum")
    with pytest.raises(ImageOpsError, match="expected 2"):
        join_tiles(maps[:1], plan, 4, 6)
