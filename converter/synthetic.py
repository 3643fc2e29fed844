"""A DAGM2007-like synthetic defect generator (numpy + OpenCV, no TensorFlow).

It serves two users: the training tests and benchmark (``write_dagm`` writes a
data set in the real DAGM2007 layout) and the line-side synthetic camera in
``edge/`` (``render`` makes one frame fast enough to call at camera rate, about
5 ms for 512x512 on one core). That second user is why it lives in the TF-free
``converter`` package.

An image is a textured surface from one of ``FAMILIES``; a defective image has
one defect of one of ``DEFECT_KINDS``. As in DAGM, the label is *weak*: a filled
ellipse that covers the defect rather than its exact outline. DAGM ClassN maps to
a (family, defect kinds) pair through ``class_spec``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from converter.errors import LinesideError

logger = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = ("noise", "fabric", "wood", "brushed_metal", "stippled", "printed", "leather")
DEFECT_KINDS: tuple[str, ...] = ("scratch", "spot", "stain", "crack", "missing_print")

# DAGM has ten classes; each pairs one texture with a small set of defect kinds.
# Classes 7-10 reuse textures with other defect sets, like DAGM's "development" classes.
_CLASS_SPECS: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("noise", ("scratch", "spot")),
    2: ("fabric", ("stain", "spot")),
    3: ("wood", ("crack", "scratch")),
    4: ("brushed_metal", ("scratch", "spot")),
    5: ("stippled", ("stain", "crack")),
    6: ("printed", ("missing_print", "spot")),
    7: ("leather", ("crack", "stain")),
    8: ("fabric", ("missing_print", "scratch")),
    9: ("noise", ("stain", "crack")),
    10: ("wood", ("spot", "missing_print")),
}
N_CLASSES = len(_CLASS_SPECS)


# Bumped whenever the same seed starts drawing different images, so a cached data set
# from an older generator is never mistaken for the current one.
# 2: the streaks of "wood" and "brushed_metal" wrap around the edges instead of reflecting there.
GENERATOR_VERSION = 2


class SyntheticError(LinesideError, ValueError):
    """A bad argument to the synthetic generator (class id, defect kind, size)."""


def class_spec(class_id: int) -> tuple[str, tuple[str, ...]]:
    """DAGM ClassN -> (texture family, defect kinds used by that class)."""
    if class_id not in _CLASS_SPECS:
        msg = f"unknown synthetic class {class_id!r}; allowed: 1..{N_CLASSES}"
        raise SyntheticError(msg)
    return _CLASS_SPECS[class_id]


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 32 or w < 32:
        msg = f"synthetic image size must be at least 32x32, got {h}x{w}"
        raise SyntheticError(msg)
    return h, w


# --------------------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, hw: tuple[int, int], cells: int) -> np.ndarray:
    """Value noise: a coarse random grid upsampled bicubically (cheap in OpenCV)."""
    h, w = hw
    ch = max(2, round(cells * h / max(h, w)))
    cw = max(2, round(cells * w / max(h, w)))
    coarse = rng.standard_normal((ch, cw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _streaks(fine: np.ndarray, length: int) -> np.ndarray:
    """Horizontal streaks: a box blur of ``length`` pixels that wraps around the left and right edges.

    ``cv2.blur`` reflects at the border, which counts the same noise twice there and
    makes the streaks within ``length / 2`` px of the edges up to 1.4x as strong as in
    the middle. A model trained on crops, which rarely touch the image edge, flagged
    that stronger band as a defect on clean images; wrapping keeps the texture the same
    everywhere.
    """
    pad = length // 2
    wide = np.pad(fine, ((0, 0), (pad, pad)), mode="wrap")
    return cv2.blur(wide, (length, 1))[:, pad : pad + fine.shape[1]]


def _grid(hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _texture(rng: np.random.Generator, family: str, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return (texture float32 around 0 with std ~1, pattern layer that ``missing_print`` removes)."""
    h, w = hw
    scale = max(h, w) / 512.0  # keep feature sizes proportional to the image
    fine = rng.standard_normal(hw).astype(np.float32)
    pattern = np.zeros(hw, np.float32)
    if family == "noise":
        tex = 0.8 * _smooth_noise(rng, hw, 8) + 0.6 * _smooth_noise(rng, hw, 32) + 0.5 * fine
    elif family == "fabric":
        yy, xx = _grid(hw)
        f = rng.uniform(0.35, 0.6) / scale
        pattern = np.sin(xx * f + rng.uniform(0, 6.3)) * np.sin(yy * f * rng.uniform(0.8, 1.2))
        tex = 0.3 * _smooth_noise(rng, hw, 12) + 0.4 * fine
    elif family == "wood":
        yy, xx = _grid(hw)
        warp = _smooth_noise(rng, hw, 4) * 18 * scale
        pattern = np.sin((yy + warp) * rng.uniform(0.08, 0.14) / scale + rng.uniform(0, 6.3))
        streak = _streaks(fine, max(3, int(41 * scale)))
        tex = 1.5 * streak + 0.3 * fine + 0.3 * _smooth_noise(rng, hw, 6)
    elif family == "brushed_metal":
        k = max(3, int(61 * scale))
        tex = 4.0 * _streaks(fine, k) + 0.25 * fine + 0.5 * _smooth_noise(rng, hw, 3)
        if rng.random() < 0.5:
            tex = np.ascontiguousarray(tex.T) if h == w else tex
    elif family == "stippled":
        dots = (rng.random(hw) < 0.02).astype(np.float32)
        dots = cv2.GaussianBlur(dots, (0, 0), 1.2 * max(scale, 0.5)) * 12
        tex = 0.4 * _smooth_noise(rng, hw, 16) + 0.3 * fine
        pattern = dots - dots.mean()
    elif family == "printed":
        yy, xx = _grid(hw)
        period = rng.uniform(14, 22) * scale
        ang = rng.uniform(-0.3, 0.3)
        u = xx * math.cos(ang) + yy * math.sin(ang)
        v = -xx * math.sin(ang) + yy * math.cos(ang)
        cells = np.cos(u * 2 * np.pi / period) * np.cos(v * 2 * np.pi / period)
        pattern = np.where(cells > 0.4, 1.5, -0.3).astype(np.float32)
        pattern = cv2.GaussianBlur(pattern, (0, 0), 0.8)
        tex = 0.3 * _smooth_noise(rng, hw, 10) + 0.3 * fine
    elif family == "leather":
        cells = _smooth_noise(rng, hw, 48)
        creases = np.abs(_smooth_noise(rng, hw, 20))
        tex = 0.7 * cells - 1.2 * np.exp(-creases * 6) + 0.4 * fine
    else:
        msg = f"unknown texture family {family!r}; allowed: {', '.join(FAMILIES)}"
        raise SyntheticError(msg)
    return tex.astype(np.float32), pattern.astype(np.float32)


# --------------------------------------------------------------------------- defects


def _draw_scratch(rng: np.random.Generator, canvas: np.ndarray, hw: tuple[int, int], s: float) -> None:
    h, w = hw
    length = rng.uniform(0.15, 0.4) * min(h, w)
    ang = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    bend = rng.uniform(-0.15, 0.15) * length
    t = np.linspace(-0.5, 0.5, 12)
    xs = cx + t * length * math.cos(ang) - (1 - 4 * t**2) * bend * math.sin(ang)
    ys = cy + t * length * math.sin(ang) + (1 - 4 * t**2) * bend * math.cos(ang)
    pts = np.stack([xs, ys], 1).round().astype(np.int32)
    cv2.polylines(canvas, [pts], False, 1.0, max(1, round(rng.uniform(1.5, 3.0) * s)), cv2.LINE_AA)


def _draw_spot(rng: np.random.Generator, canvas: np.ndarray, hw: tuple[int, int], s: float) -> None:
    h, w = hw
    r = rng.uniform(6, 16) * s
    center = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.2, 0.8) * h))
    axes = (max(2, int(r)), max(2, int(r * rng.uniform(0.6, 1.0))))
    cv2.ellipse(canvas, center, axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)


def _draw_stain(rng: np.random.Generator, canvas: np.ndarray, hw: tuple[int, int], s: float) -> None:
    h, w = hw
    r = rng.uniform(18, 40) * s
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    # an irregular blob: a polygon whose radius wobbles with angle
    ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    rad = r * (1 + 0.25 * np.sin(ang * rng.integers(2, 5) + rng.uniform(0, 6.3)))
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * rng.uniform(0.5, 1.0) * np.sin(ang)], 1)
    cv2.fillPoly(canvas, [pts.round().astype(np.int32)], 1.0, cv2.LINE_AA)


def _draw_crack(rng: np.random.Generator, canvas: np.ndarray, hw: tuple[int, int], s: float) -> None:
    h, w = hw
    x, y = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    ang = rng.uniform(0, 2 * np.pi)
    step = 6 * s
    pts = [(x, y)]
    for _ in range(int(rng.integers(10, 20))):
        ang += rng.normal(0, 0.5)
        x = float(np.clip(x + step * math.cos(ang), 2, w - 3))
        y = float(np.clip(y + step * math.sin(ang), 2, h - 3))
        pts.append((x, y))
    arr = np.array(pts).round().astype(np.int32)
    cv2.polylines(canvas, [arr], False, 1.0, max(1, round(2 * s)), cv2.LINE_AA)
    # one short branch, as real cracks fork
    j = int(rng.integers(2, len(pts) - 1))
    bang = ang + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
    bx, by = pts[j]
    branch = [(bx, by)]
    for _ in range(int(rng.integers(3, 7))):
        bang += rng.normal(0, 0.4)
        bx = float(np.clip(bx + step * math.cos(bang), 2, w - 3))
        by = float(np.clip(by + step * math.sin(bang), 2, h - 3))
        branch.append((bx, by))
    cv2.polylines(canvas, [np.array(branch).round().astype(np.int32)], False, 1.0, 1, cv2.LINE_AA)


def _draw_patch(rng: np.random.Generator, canvas: np.ndarray, hw: tuple[int, int], s: float) -> None:
    h, w = hw
    center = (int(rng.uniform(0.25, 0.75) * w), int(rng.uniform(0.25, 0.75) * h))
    axes = (int(rng.uniform(20, 40) * s), int(rng.uniform(12, 28) * s))
    cv2.ellipse(canvas, center, axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)


_DRAW = {
    "scratch": _draw_scratch,
    "spot": _draw_spot,
    "stain": _draw_stain,
    "crack": _draw_crack,
    "missing_print": _draw_patch,
}


def weak_label(defect_mask: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    """A filled ellipse around the defect pixels (DAGM's weak label) and its bbox [x, y, w, h]."""
    label = np.zeros(hw, np.uint8)
    pts = cv2.findNonZero((defect_mask > 0.25).astype(np.uint8))
    if pts is None:
        return label, [0, 0, 0, 0]
    (cx, cy), (rw, rh), ang = cv2.minAreaRect(pts)
    # the ellipse inscribed in a rectangle misses its corners; 1.3x plus a margin covers them
    margin = 10 + 0.03 * max(hw)
    axes = (rw * 1.3 + margin, rh * 1.3 + margin)
    cv2.ellipse(label, ((cx, cy), axes, ang), 255, -1)
    x, y, bw, bh = cv2.boundingRect(cv2.findNonZero(label))
    return label, [int(x), int(y), int(bw), int(bh)]


def render(
    rng: np.random.Generator,
    size: int | tuple[int, int] = 512,
    class_id: int = 1,
    defective: bool = False,
    defect: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Render one grayscale frame of ``class_id``'s texture, with one defect when ``defective``.

    Returns (image uint8 HxW, weak elliptical label uint8 HxW in {0, 255}, info dict
    ``{"class_id", "family", "defective", "kind", "bbox"}``). ``defect`` picks the kind;
    by default one of the class's kinds is drawn. Deterministic for a given rng state.
    """
    hw = _size_hw(size)
    family, kinds = class_spec(class_id)
    if defect is not None and defect not in DEFECT_KINDS:
        msg = f"unknown defect kind {defect!r}; allowed: {', '.join(DEFECT_KINDS)}"
        raise SyntheticError(msg)
    defective = bool(defective or defect is not None)
    s = max(hw) / 512.0
    tex, pattern = _texture(rng, family, hw)
    brightness = rng.uniform(95, 150)
    contrast = rng.uniform(14, 22)  # gray levels per unit of texture
    pattern_gain = contrast
    info: dict[str, Any] = {"class_id": class_id, "family": family, "defective": defective, "kind": None}
    label = np.zeros(hw, np.uint8)
    info["bbox"] = [0, 0, 0, 0]
    if defective:
        kind = defect if defect is not None else kinds[int(rng.integers(len(kinds)))]
        canvas = np.zeros(hw, np.float32)
        # below 512 px defects shrink less than the texture, so small test images stay learnable
        _DRAW[kind](rng, canvas, hw, max(s, 0.6))
        soft = cv2.GaussianBlur(canvas, (0, 0), 0.8)
        sign = -1.0 if rng.random() < 0.7 else 1.0  # most defects are darker than the surface
        if kind == "missing_print":
            # the printed/woven layer is absent inside the patch and the surface shows through flat
            if not pattern.any():
                pattern = 1.2 * _smooth_noise(rng, hw, 64)
            tex = tex * (1 - 0.7 * soft)
            pattern = pattern * (1 - soft)
            tex = tex + sign * 1.2 * soft
        else:
            # DAGM defects are a few texture standard deviations deep, not saturated
            depth = {"scratch": 2.2, "spot": 2.5, "stain": 1.6, "crack": 2.6}[kind]
            tex = tex + sign * depth * rng.uniform(0.9, 1.3) * soft
        label, info["bbox"] = weak_label(canvas, hw)
        info["kind"] = kind
    img = brightness + contrast * tex + pattern_gain * pattern
    return np.clip(img, 0, 255).astype(np.uint8), label, info


# --------------------------------------------------------------------------- DAGM layout


RenderOne = Callable[[np.random.Generator, bool], tuple[np.ndarray, np.ndarray]]


def image_name(index: int) -> str:
    """The file name ``write_split`` gives its ``index``-th image (from 1): ``0001.PNG``."""
    return f"{index:04d}.PNG"


def write_split(
    split_dir: Path, rng: np.random.Generator, n: int, defect_fraction: float, render_one: RenderOne
) -> dict[str, int]:
    """Write ``n`` images of one DAGM split: ``NNNN.PNG``, ``Label/NNNN_label.PNG`` and ``Label/Labels.txt``.

    ``render_one(rng, defective)`` makes one (image, label) pair; it is how other
    generators (``training/datasets/realsurface.py``) share this layout code.
    """
    label_dir = split_dir / "Label"
    label_dir.mkdir(parents=True, exist_ok=True)
    # fixed count of defective images, shuffled, so small sets still hold both kinds
    n_def = round(n * defect_fraction)
    flags = np.zeros(n, bool)
    flags[:n_def] = True
    rng.shuffle(flags)
    lines = [str(n)]
    for i, defective in enumerate(flags, start=1):
        img, label = render_one(rng, bool(defective))
        name = image_name(i)
        cv2.imwrite(str(split_dir / name), img)
        if defective:
            label_name = name.replace(".PNG", "_label.PNG")
            cv2.imwrite(str(label_dir / label_name), label)
            lines.append(f"{i}\t1\t{name}\t0\t{label_name}")
        else:
            lines.append(f"{i}\t0\t{name}\t0\t0")
    (label_dir / "Labels.txt").write_text("\n".join(lines) + "\n")
    return {"images": n, "defective": int(n_def)}


def _render_pair(rng: np.random.Generator, defective: bool, size: int, class_id: int) -> tuple:
    image, label, _ = render(rng, size, class_id, defective)
    return image, label


def write_dagm(
    root: str | Path,
    classes: tuple[int, ...] | list[int] = (1,),
    n_train: int = 100,
    n_test: int = 100,
    size: int = 512,
    defect_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a synthetic data set in the DAGM2007 layout under ``root`` and return a summary.

    Layout per class: ``ClassN/Train/0001.PNG``, ``ClassN/Train/Label/0001_label.PNG``
    (label files only for defective images) and ``ClassN/Train/Label/Labels.txt``
    (first line: count; then ``index  defective  image  0  label-or-0``); same for ``Test``.
    Each (class, split) has its own seeded stream, so Test never depends on n_train.
    """
    if not 0.0 <= defect_fraction <= 1.0:
        msg = f"defect_fraction must be within [0, 1], got {defect_fraction}"
        raise SyntheticError(msg)
    root = Path(root)
    summary: dict[str, Any] = {
        "root": str(root),
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "classes": {},
    }
    for class_id in classes:
        class_spec(class_id)
        per_split = {}
        for split_idx, (split, n) in enumerate((("Train", n_train), ("Test", n_test))):
            rng = np.random.default_rng([seed, class_id, split_idx])
            render_one = functools.partial(_render_pair, size=size, class_id=class_id)
            per_split[split] = write_split(
                root / f"Class{class_id}" / split, rng, n, defect_fraction, render_one
            )
        summary["classes"][class_id] = per_split
        logger.info("wrote synthetic Class%d under %s: %s", class_id, root, per_split)
    return summary
