"""A real-surface validation set: drawn defects on crops of real photographed textures.

The synthetic generator (``converter/synthetic.py``) makes both the textures and
the defects, so a model can learn the generator instead of the surface. This set
takes its surfaces from photographs that scikit-image ships in its wheel
(``TEXTURES``: brick, grass and gravel are CC0 photographs, moon is a low-contrast
lunar surface with craters that look like defects), and draws its defects with
code of its own, written without looking at the synthetic kinds:

- ``scratch``: a thin smooth curve, 1-4 px wide at 512 px, darker or brighter than
  the surface, fading along its length;
- ``blob``: an irregular stain, either a tint that keeps the texture or an opaque
  spill that covers it;
- ``smudge``: a large, low-contrast patch where the texture is smeared flat.

Each defect's depth is a multiple of the crop's own texture contrast drawn
log-uniformly between 0.5 and 3, so some are subtle and some are plain. Crops take
a random window (45-85 % of the photograph's side), a quarter turn, a flip and a
small rotation, and a camera model then adds uneven light, gain, offset, gamma,
defocus blur and sensor noise to the whole frame, defect included.

Labels: ``ellipse`` (the default) writes DAGM's weak label, a filled ellipse over
the defect, as in real DAGM2007 and in the held-back real-texture set of issue 13,
so figures compare with both; ``pixel`` writes exactly the pixels the defect
changed by at least a third of its strength, for judging shapes.

Written in the DAGM2007 layout by the same writer as the synthetic set
(``converter.synthetic.write_split``), so ``dataset.kind: dagm`` reads it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from converter.synthetic import image_name, weak_label, write_split
from training.datasets.base import DatasetError

logger = logging.getLogger(__name__)

TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel", "moon")
DEFECT_KINDS: tuple[str, ...] = ("scratch", "blob", "smudge")
LABEL_MODES: tuple[str, ...] = ("ellipse", "pixel")
MARKER = "realsurface.json"

# Bumped whenever the same seed starts drawing different images.
GENERATOR_VERSION = 1

_MASK_LEVEL = 1 / 3  # a pixel belongs to the defect when it got at least this share of its strength


class RealSurfaceError(DatasetError):
    """A bad argument to the real-surface set, or scikit-image's photographs are not available."""


@functools.lru_cache(maxsize=len(TEXTURES))
def photograph(texture: str) -> np.ndarray:
    """The grayscale float32 photograph behind ``texture``, read from scikit-image's shipped data."""
    if texture not in TEXTURES:
        msg = f"unknown real-surface texture {texture!r}; allowed: {', '.join(TEXTURES)}"
        raise RealSurfaceError(msg)
    try:
        from skimage import data
    except ImportError:
        msg = (
            "the real-surface set is cut from scikit-image's photographs, but scikit-image is not "
            "installed; install it with: pip install -e '.[train]' (or pip install scikit-image)"
        )
        raise RealSurfaceError(msg) from None
    try:
        image = np.asarray(getattr(data, texture)())
    except Exception as exc:  # a stripped install fetches data files from the network, which may fail
        msg = f"scikit-image could not load its {texture!r} photograph ({exc}); reinstall scikit-image"
        raise RealSurfaceError(msg) from None
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    return image.astype(np.float32)


# --------------------------------------------------------------------------- crops


def _crop(rng: np.random.Generator, photo: np.ndarray, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A ``size`` x ``size`` view of ``photo`` at a random window, quarter turn, flip and small angle."""
    photo = np.rot90(photo, int(rng.integers(4)))
    if rng.random() < 0.5:
        photo = photo[:, ::-1]
    photo = np.ascontiguousarray(photo)
    side = min(photo.shape)
    window = rng.uniform(0.45, 0.85) * side
    # the rotated window must stay inside the photograph: w * (|cos| + |sin|) <= side
    fit = math.asin(min(1.0, (side - 2) / (window * math.sqrt(2)))) - math.pi / 4
    angle = rng.uniform(-1, 1) * min(math.radians(20), max(fit, 0.0))
    reach = window * (abs(math.cos(angle)) + abs(math.sin(angle))) / 2
    cy = rng.uniform(reach, photo.shape[0] - reach)
    cx = rng.uniform(reach, photo.shape[1] - reach)
    step = window / size  # photograph pixels per output pixel
    if step > 1:  # shrinking: blur first so the crop does not alias
        photo = cv2.GaussianBlur(photo, (0, 0), 0.5 * step)
    cos, sin = math.cos(angle) * step, math.sin(angle) * step
    half = size / 2
    # maps an output pixel to its photograph pixel (used with WARP_INVERSE_MAP)
    m = np.array(
        [[cos, -sin, cx - cos * half + sin * half], [sin, cos, cy - sin * half - cos * half]], np.float32
    )
    crop = cv2.warpAffine(
        photo, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
    )
    return crop, {"window": round(window, 1), "angle_deg": round(math.degrees(angle), 2)}


# --------------------------------------------------------------------------- defects


def _place(rng: np.random.Generator, size: int) -> tuple[float, float]:
    return rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size


def _scratch(rng: np.random.Generator, size: int, s: float) -> np.ndarray:
    """Strength map of a thin smooth curve that fades along its length."""
    length = rng.uniform(0.15, 0.6) * size
    steps = 24
    heading = rng.uniform(0, 2 * math.pi)
    turn = rng.normal(0, 0.06)  # a steady bend plus a little wobble: scratches are smooth
    x, y = _place(rng, size)
    points = [(x, y)]
    for _ in range(steps):
        heading += turn + rng.normal(0, 0.04)
        x += length / steps * math.cos(heading)
        y += length / steps * math.sin(heading)
        points.append((x, y))
    width = max(1, round(rng.uniform(1, 4) * s))
    canvas = np.zeros((size, size), np.float32)
    fade = rng.uniform(0.5, 1.0, size=2)
    for i in range(steps):  # segment by segment, so the strength can fade along the scratch
        t = i / (steps - 1)
        strength = float(fade[0] + (fade[1] - fade[0]) * t)
        a = tuple(round(v) for v in points[i])
        b = tuple(round(v) for v in points[i + 1])
        segment = np.zeros_like(canvas)
        cv2.line(segment, a, b, strength, width, cv2.LINE_AA)
        np.maximum(canvas, segment, out=canvas)
    return canvas


def _irregular(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """A filled shape whose radius wobbles with angle (a few random harmonics)."""
    cx, cy = _place(rng, size)
    ang = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    rad = np.ones_like(ang)
    for harmonic in range(2, 6):
        rad += rng.uniform(0, 0.35 / harmonic * 2) * np.sin(harmonic * ang + rng.uniform(0, 2 * np.pi))
    squash = rng.uniform(0.5, 1.0)
    tilt = rng.uniform(0, np.pi)
    px, py = radius * rad * np.cos(ang), radius * rad * squash * np.sin(ang)
    pts = np.stack(
        [cx + px * math.cos(tilt) - py * math.sin(tilt), cy + px * math.sin(tilt) + py * math.cos(tilt)], 1
    )
    canvas = np.zeros((size, size), np.float32)
    cv2.fillPoly(canvas, [pts.round().astype(np.int32)], 1.0, cv2.LINE_AA)
    return canvas


def _blob(rng: np.random.Generator, size: int, s: float) -> np.ndarray:
    shape = _irregular(rng, size, rng.uniform(6, 35) * s)
    return cv2.GaussianBlur(shape, (0, 0), max(0.6, rng.uniform(0.5, 2.0) * s))


def _smudge(rng: np.random.Generator, size: int, s: float) -> np.ndarray:
    radius = rng.uniform(25, 70) * s
    shape = _irregular(rng, size, radius)
    soft = cv2.GaussianBlur(shape, (0, 0), radius / 4)
    # a smudge fades out but has no endless tail: strength rises from 0 at 15 % of the peak
    return np.clip((soft - 0.15) / 0.6, 0, 1)


_DRAW = {"scratch": _scratch, "blob": _blob, "smudge": _smudge}


def draw_defect(
    rng: np.random.Generator, surface: np.ndarray, kind: str | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw one defect on a float ``surface``; returns (surface with it, its pixel mask bool, info)."""
    size = surface.shape[0]
    if kind is None:
        kind = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
    if kind not in DEFECT_KINDS:
        msg = f"unknown real-surface defect kind {kind!r}; allowed: {', '.join(DEFECT_KINDS)}"
        raise RealSurfaceError(msg)
    s = max(size / 512.0, 0.4)  # small test images keep defects a few pixels wide
    for _ in range(20):  # a curve can leave the frame; draw again until most of it is inside
        alpha = _DRAW[kind](rng, size, s)
        mask = alpha >= _MASK_LEVEL
        if mask.sum() >= 6:
            break
    spread = float(surface.std()) or 1.0
    contrast = float(math.exp(rng.uniform(math.log(0.5), math.log(3.0))))
    sign = -1.0 if rng.random() < 0.65 else 1.0  # dirt and grooves are darker more often than not
    depth = sign * contrast * spread
    info: dict[str, Any] = {"kind": kind, "contrast": round(contrast, 3), "dark": sign < 0}
    if kind == "scratch":
        out = surface + depth * alpha
    elif kind == "blob":
        if rng.random() < 0.5:  # a tint: the texture shows through
            out = surface + depth * alpha
            info["style"] = "tint"
        else:  # a spill: the texture is covered by a flat tone
            tone = float(surface.mean()) + depth
            opacity = rng.uniform(0.7, 1.0)
            out = surface * (1 - opacity * alpha) + tone * opacity * alpha
            info["style"] = "spill"
    else:
        smeared = cv2.GaussianBlur(surface, (0, 0), rng.uniform(3, 8) * s)
        out = surface * (1 - alpha) + (smeared + 0.5 * depth) * alpha
    return out.astype(np.float32), mask, info


# --------------------------------------------------------------------------- camera


def _camera(rng: np.random.Generator, scene: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """What a real camera does to the scene: uneven light, gain, offset, gamma, defocus, noise."""
    size = scene.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    light = 1 + rng.uniform(-0.12, 0.12) * xx + rng.uniform(-0.12, 0.12) * yy
    gain = rng.uniform(0.7, 1.4)
    mean = float(scene.mean())
    level = rng.uniform(80, 170)
    image = np.clip(((scene - mean) * gain + level) * light, 0, 255)
    gamma = rng.uniform(0.8, 1.25)
    image = 255 * (image / 255) ** gamma
    blur = rng.uniform(0.3, 1.2) * size / 512 if rng.random() < 0.5 else 0.0
    if blur > 0.25:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    noise = rng.uniform(1.0, 5.0)
    image = image + rng.normal(0, noise, image.shape)
    info = {
        "gain": round(gain, 3),
        "gamma": round(gamma, 3),
        "blur": round(blur, 2),
        "noise": round(noise, 2),
    }
    return np.clip(image, 0, 255).round().astype(np.uint8), info


# --------------------------------------------------------------------------- one image, the set


def render(
    rng: np.random.Generator,
    texture: str,
    size: int = 512,
    defective: bool = False,
    labels: str = "ellipse",
    kind: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One camera frame of ``texture``; returns (image uint8, label uint8 in {0, 255}, info).

    A defective frame holds one defect (``kind``, or one drawn at random); its label
    is a weak ellipse or the exact pixels, as ``labels`` says. Deterministic for a rng state.
    """
    if size < 64:
        msg = f"real-surface image size must be at least 64 px, got {size}"
        raise RealSurfaceError(msg)
    if labels not in LABEL_MODES:
        msg = f"unknown label mode {labels!r}; allowed: {', '.join(LABEL_MODES)}"
        raise RealSurfaceError(msg)
    surface, info = _crop(rng, photograph(texture), size)
    info.update(texture=texture, defective=bool(defective or kind is not None), kind=None)
    label = np.zeros((size, size), np.uint8)
    if info["defective"]:
        surface, mask, defect = draw_defect(rng, surface, kind)
        info.update(defect)
        if labels == "pixel":
            label[mask] = 255
        else:
            label, _ = weak_label(mask.astype(np.float32), (size, size))
    image, camera = _camera(rng, surface)
    info["camera"] = camera
    if info["defective"]:
        info["visibility"] = visibility(image, mask)
    return image, label, info


def visibility(image: np.ndarray, mask: np.ndarray) -> float:
    """How far a defect stands out of its surroundings in the final frame, in their own spread.

    The larger of two changes between the defect's pixels and a ring around them (6-24 px out
    at 512 px): the shift of the mean, in standard deviations of the ring, and the change of
    the texture's spread, |ln(std inside / std of the ring)| (a smudge smears the texture flat
    more than it darkens it; halving the spread counts like a shift of 0.69). The drawn contrast
    is relative to the clean crop before the camera; this is what an inspector (or a model)
    sees after gain, blur and noise, so misses are judged against it: below about 0.5 a
    defect is hard to see at all.
    """
    size = image.shape[0]
    near = max(1, round(6 * size / 512))
    far = max(near + 2, round(24 * size / 512))
    inside = mask.astype(np.uint8)
    ring = cv2.dilate(inside, np.ones((2 * far + 1, 2 * far + 1), np.uint8)) > 0
    ring &= ~(cv2.dilate(inside, np.ones((2 * near + 1, 2 * near + 1), np.uint8)) > 0)
    pixels = image.astype(np.float32)
    spread = max(float(pixels[ring].std()), 0.5)  # a flat ring: half a gray level, not zero
    shift = abs(float(pixels[mask].mean()) - float(pixels[ring].mean())) / spread
    texture = abs(math.log(max(float(pixels[mask].std()), 0.5) / spread))
    return round(max(shift, texture), 2)


@dataclasses.dataclass
class _SplitRenderer:
    """``write_split``'s renderer for one split; notes each defect under its image's name."""

    texture: str
    size: int
    labels: str
    defects: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    rendered: int = 0

    def __call__(self, rng: np.random.Generator, defective: bool) -> tuple[np.ndarray, np.ndarray]:
        image, label, info = render(rng, self.texture, self.size, defective, self.labels)
        self.rendered += 1  # write_split renders its images in name order
        if defective:
            keep = ("kind", "contrast", "dark", "style", "visibility")
            self.defects[image_name(self.rendered)] = {k: info[k] for k in keep if k in info}
        return image, label


def write_realsurface(
    root: str | Path,
    textures: tuple[str, ...] | list[str] = TEXTURES,
    n_train: int = 150,
    n_test: int = 60,
    size: int = 512,
    defect_fraction: float = 0.35,
    seed: int = 1,
    labels: str = "ellipse",
) -> dict[str, Any]:
    """Write the real-surface set under ``root`` in the DAGM2007 layout, Class1.. in ``textures`` order.

    Each (class, split) has its own seeded stream, so Test never depends on ``n_train``.
    ``root/realsurface.json`` records the settings, which texture each class is and, per split,
    each defect by image name (kind, drawn contrast, dark or light, blob style, visibility).
    """
    textures = list(textures)
    if not textures:
        msg = f"name at least one texture; allowed: {', '.join(TEXTURES)}"
        raise RealSurfaceError(msg)
    for texture in textures:
        photograph(texture)
    if not 0.0 <= defect_fraction <= 1.0:
        msg = f"defect fraction must be within [0, 1], got {defect_fraction}"
        raise RealSurfaceError(msg)
    if n_train < 1 or n_test < 1:
        msg = f"each split needs at least one image, got {n_train} train and {n_test} test"
        raise RealSurfaceError(msg)
    render(np.random.default_rng(0), textures[0], size, labels=labels)  # size and label mode, checked once
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        msg = f"{root} is not empty; choose a new folder for the real-surface set"
        raise RealSurfaceError(msg)
    summary: dict[str, Any] = {
        "generator": f"realsurface {GENERATOR_VERSION}",
        "seed": seed,
        "size": size,
        "labels": labels,
        "defect_fraction": defect_fraction,
        "classes": {},
    }
    for class_id, texture in enumerate(textures, start=1):
        per_split: dict[str, Any] = {"texture": texture}
        for split_idx, (split, n) in enumerate((("Train", n_train), ("Test", n_test))):
            # the trailing 13 keeps these streams apart from the synthetic set's for the same seed
            rng = np.random.default_rng([seed, class_id, split_idx, 13])
            draw = _SplitRenderer(texture, size, labels)
            per_split[split] = write_split(root / f"Class{class_id}" / split, rng, n, defect_fraction, draw)
            per_split[split]["defects"] = draw.defects
        summary["classes"][class_id] = per_split
        logger.info("wrote real-surface Class%d (%s) under %s", class_id, texture, root)
    (root / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    return {"root": str(root), **summary}


# --------------------------------------------------------------------------- what fails

#: visibility bands of the evaluation's breakdown (see ``visibility``)
VISIBILITY_BANDS: tuple[tuple[float, float], ...] = ((0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, math.inf))


def _band(value: float) -> str:
    """The name of the band ``value`` falls in (bands cover 0 and up)."""
    low, high = next((lo, hi) for lo, hi in VISIBILITY_BANDS if value < hi)
    return f"visibility >= {low:g}" if high == math.inf else f"visibility {low:g}-{high:g}"


def by_defect(rows: list[dict[str, Any]], root: str | Path) -> dict[str, dict[str, Any]] | None:
    """The defective images of an evaluation, grouped by defect kind and by visibility band.

    ``rows`` are ``eval.json``'s per-image rows; ``root`` is the data set they came from. Only a
    set written by ``lineside realsurface`` records its defects, so any other gives None.
    Each group: images, found (decided defective), tpr and mean Dice.
    """
    marker = Path(root) / MARKER
    if not marker.is_file():
        return None
    classes = json.loads(marker.read_text()).get("classes", {})
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if not row["defective"]:
            continue
        image = Path(row["image"])
        split, class_dir = image.parent.name, image.parent.parent.name
        recorded = classes.get(class_dir.removeprefix("Class"), {}).get(split, {}).get("defects", {})
        info = recorded.get(image.name)
        if info is None:  # a set written before defects were recorded, or an image not of the set
            continue
        for group in (info["kind"], _band(info["visibility"])):
            groups.setdefault(group, []).append(row)
    if not groups:
        return None
    order = [*DEFECT_KINDS, *(_band(low) for low, _ in VISIBILITY_BANDS)]
    out = {}
    for name in (g for g in order if g in groups):
        members = groups[name]
        found = sum(bool(r["predicted_defective"]) for r in members)
        out[name] = {
            "images": len(members),
            "found": found,
            "tpr": found / len(members),
            "dice": float(np.mean([r["dice"] for r in members])),
        }
    return out


def format_by_defect(groups: dict[str, dict[str, Any]]) -> str:
    """``by_defect``'s groups as lines for ``lineside eval``."""
    lines = ["defective images by defect kind and by visibility (realsurface.json):"]
    for name, g in groups.items():
        lines.append(
            f"  {name:<18} {g['images']:>4} images  found {g['found']:>4} ({100 * g['tpr']:5.1f} %)"
            f"  Dice {g['dice']:.3f}"
        )
    return "\n".join(lines)
