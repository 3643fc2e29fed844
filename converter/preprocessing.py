"""The one definition of input normalization, shared by training and the line.

Training (tf.data), the ONNX parity checks and the line-side workers all map a
uint8 pixel ``p`` to ``p * scale + offset``; keeping the constants here is what
makes "identical preprocessing" a fact rather than a hope.
"""

from __future__ import annotations

import numpy as np

#: name -> (scale, offset) applied as ``uint8 * scale + offset``.
NORMALIZATIONS: dict[str, tuple[float, float]] = {
    "zero_one": (1.0 / 255.0, 0.0),
    "zero_centered": (2.0 / 255.0, -1.0),
}


def check_normalization(name: str) -> tuple[float, float]:
    """Return (scale, offset) for ``name`` or raise a ValueError naming the allowed values."""
    try:
        return NORMALIZATIONS[name]
    except KeyError:
        msg = f"unknown normalization {name!r}; allowed: {', '.join(sorted(NORMALIZATIONS))}"
        raise ValueError(msg) from None


def normalize(pixels: np.ndarray, name: str, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 pixels -> float32 model input, written into ``out`` when given (no allocation)."""
    scale, offset = check_normalization(name)
    if out is None:
        out = np.empty(pixels.shape, dtype=np.float32)
    np.multiply(pixels, np.float32(scale), out=out, casting="unsafe")
    if offset:
        out += np.float32(offset)
    return out


def pixels_of(normalized: np.ndarray, name: str) -> np.ndarray:
    """Model input -> the uint8 pixels that ``normalize`` made it from (to show or to change them)."""
    scale, offset = check_normalization(name)
    return np.clip((normalized - offset) / scale, 0, 255).round().astype(np.uint8)
