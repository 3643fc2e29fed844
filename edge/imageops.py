"""Image operations on the frame hot path: grayscale, ROI crop, resize, and tiling.

Everything here returns views where it can (``crop_roi``, ``to_gray`` of a gray frame,
``resize_to`` to the same size): copying a 5 MP frame costs more than the operation.
A view is not C-contiguous; call ``np.ascontiguousarray`` before sending it as a buffer.

Tiling serves models whose input is smaller than the frame, for example a 1600×256
Severstal strip seen by a 256×256 model::

    plan = plan_tiles(256, 1600, 256, 256)        # 7 tiles: x = 0, 256, ..., 1280, 1344
    tiles = cut_tiles(frame, plan, 256, 256)      # (7, 256, 256)
    probs = backend.infer(tiles[..., None] ...)   # (7, 256, 256) per-tile maps
    full = join_tiles(probs, plan, 256, 1600)     # (256, 1600), overlaps combined by max

Tiles sit on a regular grid with the last row/column moved back to end exactly at
the image edge, so only that last tile overlaps its neighbour, by the least amount
that covers the image.
"""

from __future__ import annotations

import cv2
import numpy as np

from converter.errors import LinesideError

__all__ = [
    "ImageOpsError",
    "crop_roi",
    "cut_tiles",
    "join_tiles",
    "plan_tiles",
    "preview_jpeg",
    "resize_to",
    "to_gray",
]

Roi = tuple[int, int, int, int]


class ImageOpsError(LinesideError, ValueError):
    """An ROI, size or tile plan that does not fit the image; the message says what does."""


def to_gray(img: np.ndarray) -> np.ndarray:
    """BGR, BGRA or gray uint8 -> HxW gray uint8 (a gray frame is returned as is, no copy)."""
    if img.dtype != np.uint8:
        msg = f"to_gray expects uint8 pixels, got {img.dtype}"
        raise ImageOpsError(msg)
    if img.ndim == 2:
        return img
    if img.ndim == 3:
        channels = img.shape[2]
        if channels == 1:
            return img[:, :, 0]
        if channels == 3:
            return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        if channels == 4:
            return cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    msg = f"to_gray expects HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA), got shape {img.shape}"
    raise ImageOpsError(msg)


def crop_roi(img: np.ndarray, roi: Roi | None) -> np.ndarray:
    """The ``(x, y, w, h)`` region of ``img`` as a view; ``None`` means the whole image.

    Raises ImageOpsError when the ROI is empty or leaves the image, naming both sizes.
    """
    if roi is None:
        return img
    if len(roi) != 4:
        msg = f"roi must be [x, y, w, h], got {roi!r}"
        raise ImageOpsError(msg)
    x, y, w, h = (int(v) for v in roi)
    img_h, img_w = img.shape[:2]
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > img_w or y + h > img_h:
        msg = (
            f"roi [x={x}, y={y}, w={w}, h={h}] does not fit a {img_w}x{img_h} (WxH) frame; "
            f"set the camera's roi within x+w <= {img_w} and y+h <= {img_h}"
        )
        raise ImageOpsError(msg)
    return img[y : y + h, x : x + w]


def resize_to(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``(h, w)``: INTER_AREA when shrinking (no aliasing), INTER_LINEAR otherwise.

    Returns ``img`` itself when it already has that size.
    """
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        msg = f"resize target must be positive (h, w), got {size!r}"
        raise ImageOpsError(msg)
    img_h, img_w = img.shape[:2]
    if (img_h, img_w) == (h, w):
        return img
    interp = cv2.INTER_AREA if h <= img_h and w <= img_w else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def _axis_starts(length: int, tile: int) -> list[int]:
    n = -(-length // tile)  # ceil
    starts = [i * tile for i in range(n)]
    starts[-1] = length - tile  # the last tile ends exactly at the edge
    return starts


def plan_tiles(img_h: int, img_w: int, tile_h: int, tile_w: int) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of tiles that cover an ``img_h × img_w`` image, row-major.

    The fewest tiles that cover it (``ceil(img/tile)`` per axis); the last one on each
    axis is aligned to the edge, so it overlaps its neighbour instead of running off
    the image. The image must be at least one tile in each direction (resize or pad
    it first otherwise).
    """
    if min(img_h, img_w, tile_h, tile_w) <= 0:
        msg = f"image and tile sizes must be positive, got image {img_h}x{img_w}, tile {tile_h}x{tile_w}"
        raise ImageOpsError(msg)
    if img_h < tile_h or img_w < tile_w:
        msg = (
            f"a {img_h}x{img_w} (HxW) image is smaller than a {tile_h}x{tile_w} tile; "
            "resize the image to the model input instead of tiling it"
        )
        raise ImageOpsError(msg)
    return [(y, x) for y in _axis_starts(img_h, tile_h) for x in _axis_starts(img_w, tile_w)]


def cut_tiles(
    img: np.ndarray,
    plan: list[tuple[int, int]],
    tile_h: int,
    tile_w: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Copy the tiles of ``plan`` out of ``img`` into one ``(T, tile_h, tile_w[, C])`` array.

    Pass ``out`` (same shape and dtype) to reuse a buffer, e.g. a pinned host buffer,
    and skip the allocation per frame.
    """
    shape = (len(plan), tile_h, tile_w, *img.shape[2:])
    if out is None:
        out = np.empty(shape, dtype=img.dtype)
    elif out.shape != shape or out.dtype != img.dtype:
        msg = f"cut_tiles: out must be {shape} {img.dtype}, got {out.shape} {out.dtype}"
        raise ImageOpsError(msg)
    img_h, img_w = img.shape[:2]
    for i, (y, x) in enumerate(plan):
        if y < 0 or x < 0 or y + tile_h > img_h or x + tile_w > img_w:
            msg = f"tile {i} at (y={y}, x={x}) leaves the {img_h}x{img_w} image; use plan_tiles for the plan"
            raise ImageOpsError(msg)
        out[i] = img[y : y + tile_h, x : x + tile_w]
    return out


def join_tiles(
    tile_maps: np.ndarray,
    plan: list[tuple[int, int]],
    img_h: int,
    img_w: int,
    reduce: str = "max",
) -> np.ndarray:
    """Put per-tile maps ``(T, th, tw[, ...])`` back into one ``(img_h, img_w[, ...])`` map.

    Where tiles overlap, ``reduce="max"`` keeps the highest value (a defect seen by
    either tile stays a defect; the dtype is kept; a NaN stays NaN so the decision can
    refuse it), ``"mean"`` averages them (float32).
    Every pixel must be covered by the plan, as ``plan_tiles`` guarantees.
    """
    if tile_maps.ndim < 3 or tile_maps.shape[0] != len(plan):
        msg = f"join_tiles: expected {len(plan)} tile maps shaped (T, th, tw), got {tile_maps.shape}"
        raise ImageOpsError(msg)
    tile_h, tile_w = tile_maps.shape[1:3]
    shape = (img_h, img_w, *tile_maps.shape[3:])
    if reduce == "max":
        dtype = tile_maps.dtype
        # Start from the smallest value so the first tile over a pixel always wins.
        if np.issubdtype(dtype, np.floating):
            lowest = np.finfo(dtype).min
        elif dtype == np.bool_:
            lowest = False
        else:
            lowest = np.iinfo(dtype).min
        out = np.full(shape, lowest, dtype=dtype)
        for tile, (y, x) in zip(tile_maps, plan, strict=True):
            region = out[y : y + tile_h, x : x + tile_w]
            np.maximum(region, tile, out=region)
        return out
    if reduce == "mean":
        total = np.zeros(shape, dtype=np.float32)
        hits = np.zeros((img_h, img_w), dtype=np.float32)
        for tile, (y, x) in zip(tile_maps, plan, strict=True):
            total[y : y + tile_h, x : x + tile_w] += tile
            hits[y : y + tile_h, x : x + tile_w] += 1
        if not hits.all():
            msg = "join_tiles: the plan leaves pixels uncovered; make it with plan_tiles"
            raise ImageOpsError(msg)
        return total / hits.reshape(hits.shape + (1,) * (total.ndim - 2))
    msg = f"join_tiles: reduce must be 'max' or 'mean', got {reduce!r}"
    raise ImageOpsError(msg)


#: JPEG quality of a preview: small enough to publish a few per second per camera, sharp
#: enough for an operator to recognise the part
PREVIEW_QUALITY = 80


def preview_jpeg(img: np.ndarray, longest: int) -> tuple[bytes, list[int]]:
    """A small JPEG of a frame for the operators' page: ``img`` downsized (INTER_AREA, never
    enlarged) so that its longest side is at most ``longest``; returns the JPEG and its shape.
    A float frame is stretched to 0..255 first (JPEG holds 8-bit pixels)."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
    h, w = img.shape[:2]
    scale = min(1.0, longest / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, PREVIEW_QUALITY])
    if not ok:
        msg = f"cannot JPEG-encode a preview of shape {list(img.shape)}"
        raise ImageOpsError(msg)
    return buf.tobytes(), list(img.shape)
