"""Pseudo-defects: generic anomalies drawn into clean crops, labelled, so that the model learns
"differs from the texture around it" rather than the few defects a user has labelled.

A line gives few defective images, and a model trained on them learns those defects where they
lie (docs/training.md, stops 31-32: 14 of 20 grass scratches fitted, 0 of 7 new ones found).
Industrial anomaly detection meets the same shortage by drawing anomalies that belong to no
defect class: DRAEM (Zavrtanik et al., ICCV 2021) blends a foreign texture into a clean image
inside a random noise-shaped region; CutPaste (Li et al., CVPR 2021) pastes a thin "scar"
strip. This module does both, with the crop's own texture, turned, rescaled and changed in
brightness, contrast, gamma or sharpness as the foreign texture (there is no texture library
to draw from on a line's machine). Nothing here knows the shapes of any data set's defects.

The label follows the data set's convention: DAGM's weak ellipse around the drawn region
(``converter.synthetic.weak_label``) for ``dagm`` and ``synthetic`` sets, the drawn region
itself for sets labelled by pixel.
"""

from __future__ import annotations

import numpy as np

#: the drawn region's area, as a share of the crop, for the noise-shaped regions (log-uniform)
REGION_SHARE = (0.003, 0.04)
#: a scar's length as a share of the crop's side, and its width in pixels (log-uniform)
SCAR_LENGTH = (0.1, 0.5)
SCAR_WIDTH_PX = (1.5, 8.0)
#: the least mean change inside the region, in standard deviations of the crop's texture: a
#: pseudo-defect nobody could see would teach the model to mark clean texture
MIN_CHANGE_SD = 0.5


def region_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random blob-shaped region (uint8 0/1): smooth value noise thresholded, largest piece."""
    import cv2

    cells = int(rng.integers(3, 9))

    def smooth(n: int) -> np.ndarray:
        return cv2.resize(rng.random((n, n)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)

    noise = smooth(cells)
    noise = noise + 0.3 * smooth(4 * cells)
    share = float(np.exp(rng.uniform(*np.log(REGION_SHARE))))
    mask = (noise > np.quantile(noise, 1 - share)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest).astype(np.uint8)


def scar_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A thin straight strip (CutPaste's scar) at a random place and angle (uint8 0/1)."""
    import cv2

    length = rng.uniform(*SCAR_LENGTH) * min(h, w)
    width = float(np.exp(rng.uniform(*np.log(SCAR_WIDTH_PX))))
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    angle = float(rng.uniform(0, 180))
    box = cv2.boxPoints(((cx, cy), (length, width), angle))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, np.round(box).astype(np.int32), 1, lineType=cv2.LINE_8)
    return mask


def foreign_texture(rng: np.random.Generator, texture: np.ndarray) -> np.ndarray:
    """The crop's texture made foreign: turned, rescaled, then one to three of a change of
    brightness, contrast, gamma, an inversion or a blur (float32, same shape)."""
    import cv2

    h, w = texture.shape
    sd = float(texture.std()) + 1.0
    mean = float(texture.mean())
    angle, zoom = float(rng.uniform(0, 360)), float(np.exp(rng.uniform(-0.7, 0.7)))
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
    out = cv2.warpAffine(texture, turn, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    ops = rng.choice(5, size=int(rng.integers(1, 4)), replace=False)
    for op in ops:
        if op == 0:  # brightness
            out = out + rng.choice([-1, 1]) * rng.uniform(0.5, 2.5) * sd
        elif op == 1:  # contrast about the mean
            out = mean + (out - mean) * float(np.exp(rng.uniform(-1.2, 0.9)))
        elif op == 2:  # gamma
            out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** float(np.exp(rng.uniform(-0.7, 0.7)))
        elif op == 3:  # inversion about the mean
            out = 2 * mean - out
        else:  # blur: the texture smeared flat
            out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(1.0, 4.0)))
    return np.clip(out, 0, 255).astype(np.float32)


def draw(image: np.ndarray, mask: np.ndarray, seed: int, ellipse: bool) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (HxWx1 float32 0..255) with one pseudo-defect drawn in, and ``mask`` (HxWx1
    uint8) with its label added: DAGM's weak ellipse when ``ellipse``, else the region."""
    import cv2

    rng = np.random.default_rng(seed)
    crop = image[..., 0]
    h, w = crop.shape
    region = scar_mask(rng, h, w) if rng.random() < 0.5 else region_mask(rng, h, w)
    if not region.any():
        return image, mask
    src = foreign_texture(rng, crop)
    inside = region > 0
    sd = float(crop.std()) + 1.0
    change = float(np.abs(src[inside] - crop[inside]).mean())
    if change < MIN_CHANGE_SD * sd:
        src = np.clip(src + rng.choice([-1, 1]) * MIN_CHANGE_SD * sd * 2, 0, 255)
    # opacity (DRAEM's beta) and a soft edge of about a pixel, so that a hard step is no cue
    alpha = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 1.0) * float(rng.uniform(0.5, 1.0))
    out = image.copy()
    out[..., 0] = crop * (1 - alpha) + src * alpha
    if ellipse:
        from converter.synthetic import weak_label

        label = (weak_label(region, (h, w))[0] > 0).astype(np.uint8)
    else:
        label = region
    out_mask = mask.copy()
    out_mask[..., 0] |= label
    return out, out_mask
