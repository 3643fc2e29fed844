"""Copy-paste augmentation: the user's own labelled defects, pasted onto clean crops of their class.

A real line gives few defective images (the real-surface set has about 20 scratches per
texture), and a model trained on them learns those scratches where they lie rather than what a
scratch is (docs/training.md, stop 32: 14 of 20 training scratches found, 0 of 7 test ones).
Pasting each labelled defect, turned and flipped, into other clean crops of the same class
shows it on texture it was never on, so the background stops being a cue.

What is pasted is the label's whole region with the texture around the defect, since the user's
label (an ellipse on DAGM) does not say which of its pixels are the defect. So that the paste's
edge does not become a cue of its own, the patch is matched to the crop's brightness and blended
in over a soft rim (``FEATHER_PX``) outside the label, and the mask is the label itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.datasets.base import Sample

logger = logging.getLogger(__name__)

#: the rim outside a label over which the pasted texture fades into the crop's
FEATHER_PX = 4
#: labelled regions smaller than this many pixels are not pasted (a stray pixel in a mask)
MIN_AREA_PX = 4


@dataclass
class Patch:
    """One labelled defect with the texture around it: image (float32), mask (uint8 0/1) and
    the blend weights (float32 0..1: 1 on the label, fading to 0 over the rim)."""

    image: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray


@dataclass
class DefectBank:
    """The patches of a training set's labelled defects, by class.

    ``decoy_fraction`` of the pastes are decoys: a label-shaped piece of the crop's own
    texture, turned and pasted elsewhere in it the same way, with no label. A paste's rim then
    comes with and without a defect inside, so the model cannot take the rim for the defect.
    """

    by_class: dict[int, list[Patch]] = field(default_factory=dict)
    decoy_fraction: float = 0.0

    def __len__(self) -> int:
        return sum(len(p) for p in self.by_class.values())

    @classmethod
    def from_samples(
        cls, samples: list[Sample], input_cfg: dict[str, Any], image_size, decoy_fraction: float = 0.0
    ) -> DefectBank:
        """Decode the defective samples (as the training pipeline does) and cut one patch per
        connected region of each mask; say how many."""
        from training.pipeline import decoded_dataset

        defective = [s for s in samples if s.defective]
        bank = cls(decoy_fraction=decoy_fraction)
        if defective:
            for image, mask, class_id in decoded_dataset(defective, input_cfg, image_size, cache=False):
                for patch in cut_patches(image.numpy()[..., 0], mask.numpy()[..., 0]):
                    bank.by_class.setdefault(int(class_id), []).append(patch)
        if not len(bank):
            logger.warning("copy-paste: the training images hold no labelled defect, so nothing is pasted")
        else:
            logger.info(
                "copy-paste: %d labelled defects of %d class(es) pasted into %.0f%% of the crops without one "
                "(%.0f%% of them decoys)",
                len(bank),
                len(bank.by_class),
                100 * input_cfg["defect_paste_fraction"],
                100 * decoy_fraction,
            )
        return bank

    def paste(
        self, image: np.ndarray, mask: np.ndarray, class_id: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``image`` (HxWx1 float32 0..255) and ``mask`` (HxWx1 uint8) with one of the class's
        defects pasted at a random place, turned and flipped at random, or a decoy of its
        shape; unchanged when the class has none."""
        patches = self.by_class.get(int(class_id))
        if not patches:
            return image, mask
        rng = np.random.default_rng(seed)
        p = patches[rng.integers(len(patches))]
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        src, pm, alpha = (np.rot90(a, k) for a in (p.image, p.mask, p.alpha))
        if flip:
            src, pm, alpha = src[:, ::-1], pm[:, ::-1], alpha[:, ::-1]
        h, w = image.shape[:2]
        # a patch larger than the crop is cut to a crop-sized window around its label's middle
        ph, pw = src.shape
        rows, cols = np.nonzero(pm)
        t0 = int(np.clip(rows.mean() - h / 2, 0, max(ph - h, 0)))
        l0 = int(np.clip(cols.mean() - w / 2, 0, max(pw - w, 0)))
        src, pm, alpha = (a[t0 : t0 + h, l0 : l0 + w] for a in (src, pm, alpha))
        ph, pw = src.shape
        top, left = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
        decoy = rng.random() < self.decoy_fraction
        if decoy:
            # the crop's own texture from elsewhere, turned and flipped as a defect patch is
            texture = image[..., 0]
            texture = np.rot90(texture, int(rng.integers(4)) if h == w else 2 * int(rng.integers(2)))
            texture = texture[:, ::-1] if rng.integers(2) else texture
            t, l_ = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
            src = texture[t : t + ph, l_ : l_ + pw]
        out, out_mask = image.copy(), mask.copy()
        dest = out[top : top + ph, left : left + pw, 0]
        # the crop's brightness, not the source image's: a patch lighter or darker than the
        # crop around it would be a defect of its own, and one the label does not mark
        rim = pm == 0
        shift = dest[rim].mean() - src[rim].mean() if rim.any() else 0.0
        dest[:] = dest * (1 - alpha) + np.clip(src + shift, 0, 255) * alpha
        if not decoy:
            out_mask[top : top + ph, left : left + pw, 0] |= pm
        return out, out_mask


def cut_patches(image: np.ndarray, mask: np.ndarray) -> list[Patch]:
    """One patch per connected region of ``mask`` (HxW, 0/1): its bounding box with a rim of
    2 x ``FEATHER_PX``, and blend weights that fall from 1 on the region to 0 over the rim."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    margin = 2 * FEATHER_PX
    patches = []
    for i in range(1, n):
        x, y, w, h, area = stats[i]
        if area < MIN_AREA_PX:
            continue
        t, b = max(y - margin, 0), min(y + h + margin, image.shape[0])
        l_, r = max(x - margin, 0), min(x + w + margin, image.shape[1])
        region = (labels[t:b, l_:r] == i).astype(np.uint8)
        # distance outside the region, in pixels: 1 inside, linear to 0 at FEATHER_PX out
        outside = cv2.distanceTransform(1 - region, cv2.DIST_L2, 3)
        alpha = np.clip(1.0 - outside / FEATHER_PX, 0.0, 1.0).astype(np.float32)
        patches.append(Patch(image[t:b, l_:r].astype(np.float32), region, alpha))
    return patches
