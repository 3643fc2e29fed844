"""What a real camera adds to a frame, applied to the test images to see whether a model's rule
still holds (``lineside eval RUN --camera``).

The test split of a data set is photographed (or generated) once, by one camera on a good day.
The line's camera gets stuck pixels, dust on the lens, a higher gain in dim light, a JPEG
stream, a lens a little out of focus. Each artifact here is one of those at a strength an
ordinary industrial camera reaches; none is tuned to a model. The check scores the same
images under each with the run's own rule, so the table shows which ones move the TPR and
the TNR, and how far.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: the share of a frame's pixels stuck at 255 or 0: 26 pixels of a 512 x 512 frame
STUCK_SHARE = 1e-4


def stuck_pixels(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hot and dead pixels: single pixels at 255 (half of them) or 0, as a sensor without
    defect-pixel correction shows them."""
    out = pixels.copy()
    n = max(2, round(STUCK_SHARE * pixels.size))
    where = rng.choice(pixels.size, size=n, replace=False)
    out.flat[where[: n // 2]] = 255
    out.flat[where[n // 2 :]] = 0
    return out


def dust(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Six soft dark specks of 2-5 px radius, 25-50 % darker at their centre: dust on the lens
    or the sensor window."""
    h, w = pixels.shape
    yy, xx = np.mgrid[0:h, 0:w]
    shade = np.ones((h, w), np.float32)
    for _ in range(6):
        cy, cx, radius = rng.integers(0, h), rng.integers(0, w), rng.uniform(2, 5)
        depth = rng.uniform(0.25, 0.5)
        shade *= 1 - depth * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (radius / 1.5) ** 2))
    return np.clip(pixels * shade, 0, 255).round().astype(np.uint8)


def sensor_noise(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of sigma 8 gray levels: a camera at high gain in dim light."""
    return np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).round().astype(np.uint8)


def jpeg(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """JPEG at quality 40: a camera streaming compressed frames over a busy network."""
    _, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 40])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def defocus(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A Gaussian blur of sigma 1.5 px: the part a little nearer or farther than the focus."""
    return cv2.GaussianBlur(pixels, (0, 0), 1.5, borderType=cv2.BORDER_REFLECT)


def gain(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x1.3 and +10 gray levels, clipped at 255: more light or gain than on the day of the data."""
    return np.clip(pixels.astype(np.float32) * 1.3 + 10, 0, 255).round().astype(np.uint8)


#: name -> function(8-bit grayscale image, generator) -> 8-bit image of the same shape
ARTIFACTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "stuck pixels": stuck_pixels,
    "dust": dust,
    "sensor noise 8": sensor_noise,
    "jpeg 40": jpeg,
    "defocus 1.5": defocus,
    "gain 1.3": gain,
}


def camera_row(name: str, overall: dict[str, Any], threshold: float) -> dict[str, Any]:
    """One artifact's row, from the ``overall`` scores of a ``SegmentationScores`` summary."""
    keys = ("images", "defective", "tpr", "tnr")
    return {"artifact": name, **{k: overall[k] for k in keys}, "dice": overall["dice"][str(threshold)]}


def camera_check(
    model, samples: list, cfg: dict[str, Any], plain: dict[str, Any], seed: int = 0
) -> list[dict[str, Any]]:
    """TPR, TNR and Dice of ``model`` at the run's rule (``cfg["eval"]``) on ``samples`` under
    each of ``ARTIFACTS``: one row each, after a first row named "none" made from ``plain``, the
    overall scores that the evaluation of the same images as they are gave.

    Each image gets the same draw of an artifact in every call (seeded by ``seed`` and its
    place in ``samples``), so two models are compared on the same dust and the same noise.
    """
    from converter.preprocessing import normalize, pixels_of
    from training.evaluate import predictions
    from training.metrics import SegmentationScores

    ev, normalization = cfg["eval"], cfg["input"]["normalization"]
    if ev["max_images"]:
        samples = samples[: ev["max_images"]]  # the images evaluate_model scores
    rows = [camera_row("none", plain, ev["threshold"])]
    for i, (name, artifact) in enumerate(ARTIFACTS.items()):
        # each pass takes about as long as the evaluation itself
        logger.info("camera check: %s (%d of %d)", name, i + 1, len(ARTIFACTS))

        def change(image, index, artifact=artifact):
            pixels = pixels_of(image, normalization)
            normalize(artifact(pixels, np.random.default_rng([seed, index])), normalization, out=image)

        scores = SegmentationScores.at_rule(ev)
        for _, mask, prob, class_id in predictions(model, samples, cfg, change):
            scores.add(prob, mask, class_id)
        rows.append(camera_row(name, scores.summary()["overall"], ev["threshold"]))
    return rows


def format_camera_table(rows: list[dict[str, Any]], ev: dict[str, Any], split: str) -> str:
    """The check as text: one line per artifact with its change from the images as they are,
    and a mark where the TNR falls under the floor that calibration held (``eval.min_tnr``)."""

    def pct(v: float | None) -> str:
        return "    n/a" if v is None else f"{100 * v:5.1f} %"

    def change(v: float | None, base: float | None) -> str:
        return "" if v is None or base is None else f"{100 * (v - base):+5.1f}"

    base, floor = rows[0], ev["min_tnr"]
    lines = [
        f"what a camera adds ({split}, threshold {ev['threshold']:g}, min area {ev['min_defect_area']} px; "
        "training/camera.py says what each is):",
        f"  {'':<15} {'TPR':>7} {'change':>7}  {'TNR':>7} {'change':>7}",
    ]
    for row in rows:
        under = row["tnr"] is not None and row["tnr"] < floor
        lines.append(
            f"  {row['artifact']:<15} {pct(row['tpr'])} {change(row['tpr'], base['tpr']):>7}  "
            f"{pct(row['tnr'])} {change(row['tnr'], base['tnr']):>7}"
            + (f"  TNR under eval.min_tnr ({100 * floor:g} %)" if under else "")
        )
    return "\n".join(lines)
