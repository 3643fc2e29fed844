"""Severstal run-length encoding: ``start length`` pairs, 1-indexed, column-major.

Pixels are numbered top to bottom, then left to right (Fortran order), starting
at 1, which is how the Kaggle Severstal Steel Defect Detection CSV stores masks.
"""

from __future__ import annotations

import numpy as np

from training.datasets.base import DatasetError


def parse_rle(text: str, where: str = "EncodedPixels") -> np.ndarray:
    """'1 3 10 2' -> int64 array [[1, 3], [10, 2]]; malformed text raises a DatasetError naming ``where``."""
    tokens = text.split()
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        msg = f"{where}: run-length pairs must be integers, got {text[:40]!r}"
        raise DatasetError(msg) from None
    if len(values) % 2:
        msg = (
            f"{where}: run-length text has an odd number of values ({len(values)}); write start/length pairs"
        )
        raise DatasetError(msg)
    pairs = values.reshape(-1, 2)
    if len(pairs) and (pairs[:, 0].min() < 1 or pairs[:, 1].min() < 1):
        msg = f"{where}: run starts are 1-indexed and lengths positive; got a value < 1"
        raise DatasetError(msg)
    return pairs


def rle_decode(text: str, height: int, width: int, where: str = "EncodedPixels") -> np.ndarray:
    """Run-length text -> uint8 mask (height, width) with 1 on the runs."""
    flat = np.zeros(height * width, dtype=np.uint8)
    pairs = parse_rle(text, where)
    if len(pairs) and int((pairs[:, 0] + pairs[:, 1] - 1).max()) > height * width:
        msg = f"{where}: a run ends past pixel {height * width} of a {height}x{width} image"
        raise DatasetError(msg)
    for start, length in pairs:
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(width, height).T.copy()


def rle_encode(mask: np.ndarray) -> str:
    """Binary mask (height, width) -> run-length text, the inverse of ``rle_decode``."""
    flat = (np.asarray(mask).T.reshape(-1) > 0).astype(np.int8)
    padded = np.concatenate([[0], flat, [0]])
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    starts, ends = changes[0::2], changes[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends, strict=True))
