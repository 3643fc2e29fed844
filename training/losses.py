"""Segmentation losses: the seeds' BCE, smoothed Sørensen Dice, UNet_Industrial's adaptive loss and
BCE + Dice, the Tversky loss, which weighs a missed defect pixel above a false one, and a
per-image Dice, which weighs a small defect as much as a large one, a peak term for weak
labels, which asks that the brightest part of every label be marked, and the focal BCE, which
weighs the pixels the model still gets wrong above those it already gets right.

All take (y_true, y_pred) with y_pred the sigmoid probabilities, and compute in
float32 so mixed precision does not change them.
"""

from __future__ import annotations

from collections.abc import Callable

from converter.errors import LinesideError

#: UNet_Industrial switches from BCE to Dice once the Dice loss is below this
ADAPTIVE_SWITCH = 0.3
#: Tversky weights of false positive and false negative pixels (Salehi et al. 2017's choice):
#: a defect missed costs more than a false pixel, as a missed defective part does on a line
TVERSKY_ALPHA, TVERSKY_BETA = 0.3, 0.7
#: the peak term scores the top tenth of each crop's label pixels, at most this many (a thin
#: scratch fills a few percent of its weak ellipse; the cap bounds the cost of top_k)
PEAK_FRACTION, PEAK_MAX_PIXELS = 0.1, 4096
#: the focal BCE's focusing parameter (Lin et al. 2017's choice; 0 is the plain BCE)
FOCAL_GAMMA = 2.0


class LossError(LinesideError, ValueError):
    """An unknown loss name."""


def _f32(y_true, y_pred):
    import tensorflow as tf

    return tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)


def _mean_over_labelled_crops(per_crop, labelled):
    """The mean of ``per_crop`` over the crops where ``labelled`` is true; 0 when none is (a clean
    crop has no label to score, and the BCE beside the term keeps it clean)."""
    import tensorflow as tf

    weight = tf.cast(labelled, tf.float32)
    return tf.reduce_sum(per_crop * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)


def dice_coefficient(y_true, y_pred, smooth: float = 1.0, axis=None):
    """Soft Sørensen Dice, smoothed: (2|A.B| + s) / (|A| + |B| + s), over the whole batch, or
    one per image when ``axis`` names the axes to sum (all but the first)."""
    import tensorflow as tf

    y_true, y_pred = _f32(y_true, y_pred)
    intersection = tf.reduce_sum(y_true * y_pred, axis=axis)
    return (2.0 * intersection + smooth) / (
        tf.reduce_sum(y_true, axis=axis) + tf.reduce_sum(y_pred, axis=axis) + smooth
    )


def dice_loss(y_true, y_pred):
    """1 - smoothed Sørensen Dice."""
    return 1.0 - dice_coefficient(y_true, y_pred)


def bce_loss(y_true, y_pred):
    """Mean binary cross-entropy on probabilities (clipped by Keras to avoid log(0))."""
    import keras
    import tensorflow as tf

    y_true, y_pred = _f32(y_true, y_pred)
    return tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred))


def adaptive_loss(y_true, y_pred):
    """UNet_Industrial's adaptive loss: BCE while the Dice loss is >= 0.3, then the Dice loss."""
    import tensorflow as tf

    d = dice_loss(y_true, y_pred)
    return tf.where(d < ADAPTIVE_SWITCH, d, bce_loss(y_true, y_pred))


def bce_dice_loss(y_true, y_pred):
    """BCE + Dice loss, the sum commonly used on Severstal."""
    return bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


def focal_loss(y_true, y_pred):
    """Mean focal BCE (Keras's ``BinaryFocalCrossentropy``, gamma 2, no class weighting): a
    pixel's BCE times (1 - p_t)^gamma, so the mass of clean texture the model already scores
    near 0 stops dominating the mean, and the pixels it confuses (dark texture, faint defects)
    carry the gradient."""
    import keras
    import tensorflow as tf

    y_true, y_pred = _f32(y_true, y_pred)
    return tf.reduce_mean(keras.losses.binary_focal_crossentropy(y_true, y_pred, gamma=FOCAL_GAMMA))


def focal_dice_loss(y_true, y_pred):
    """Focal BCE + Dice loss: bce_dice with the BCE's easy pixels weighed down."""
    return focal_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


def tversky_loss(y_true, y_pred, smooth: float = 1.0):
    """1 - Tversky index over the batch: TP / (TP + alpha FP + beta FN), smoothed like Dice
    (alpha = beta = 0.5 is the Dice loss)."""
    import tensorflow as tf

    y_true, y_pred = _f32(y_true, y_pred)
    tp = tf.reduce_sum(y_true * y_pred)
    fp = tf.reduce_sum((1.0 - y_true) * y_pred)
    fn = tf.reduce_sum(y_true * (1.0 - y_pred))
    return 1.0 - (tp + smooth) / (tp + TVERSKY_ALPHA * fp + TVERSKY_BETA * fn + smooth)


def bce_tversky_loss(y_true, y_pred):
    """BCE + Tversky loss: BCE keeps clean texture at 0, Tversky favours catching defects."""
    return bce_loss(y_true, y_pred) + tversky_loss(y_true, y_pred)


def dice_per_image_loss(y_true, y_pred, smooth: float = 1.0):
    """1 - the mean smoothed Dice of the images (crops) that hold a defect; 0 when none does.

    The batch Dice weighs a defect by its pixels: on the real-surface set a model trained with
    it found most large smudges (Dice 0.7-0.9) and drew no pixel at all on 7 of the 15 blobs
    under 6,000 px and on 12 of 30 scratches. Here each defect counts once, whatever its size.
    Clean crops have no Dice to score (any prediction on them gives 0): the BCE that goes with
    it keeps them clean.
    """
    import tensorflow as tf

    y_true, y_pred = _f32(y_true, y_pred)
    axes = list(range(1, len(y_true.shape)))
    dice = dice_coefficient(y_true, y_pred, smooth, axis=axes)
    return _mean_over_labelled_crops(1.0 - dice, tf.reduce_sum(y_true, axis=axes) > 0)


def bce_dice_per_image_loss(y_true, y_pred):
    """BCE + the per-image Dice loss: small and thin defects weigh as much as large ones."""
    return bce_loss(y_true, y_pred) + dice_per_image_loss(y_true, y_pred)


def peak_loss(y_true, y_pred, fraction: float = PEAK_FRACTION, max_pixels: int = PEAK_MAX_PIXELS):
    """-log of the mean probability of the brightest ``fraction`` of each crop's label pixels,
    averaged over the crops that hold a label; 0 when none does.

    A weak label (DAGM's ellipse) around a thin scratch is mostly clean texture: pixel losses
    then reward a model that marks none of it, and on the real-surface set the batch-Dice
    recipe drew probability under 0.03 on all 85 training scratches. This term is the
    multiple-instance view of a weak label (the label holds the defect somewhere): it is
    satisfied once some part of each label, where the model is surest, is marked, and it does
    not push the rest of the ellipse either way. Measured (docs/training.md, stop 27): the model
    then marks every scratch, and dark texture too, so no recipe uses it yet.
    """
    import tensorflow as tf

    y_true, y_pred = _f32(y_true, y_pred)
    batch = tf.shape(y_true)[0]
    inside = tf.reshape(y_true, [batch, -1]) > 0.5
    probs = tf.reshape(y_pred, [batch, -1])
    k_max = tf.minimum(max_pixels, tf.shape(probs)[1])
    # pixels outside the label score -1, so they sort after every label pixel
    top, _ = tf.math.top_k(tf.where(inside, probs, -1.0), k=k_max)
    labelled = tf.reduce_sum(tf.cast(inside, tf.float32), axis=1)
    k = tf.clip_by_value(tf.math.ceil(labelled * fraction), 1.0, tf.cast(k_max, tf.float32))
    taken = tf.cast(tf.range(k_max)[None, :], tf.float32) < k[:, None]
    peak = tf.reduce_sum(tf.where(taken, top, 0.0), axis=1) / k
    return _mean_over_labelled_crops(-tf.math.log(tf.clip_by_value(peak, 1e-6, 1.0)), labelled > 0)


def bce_dice_peak_loss(y_true, y_pred):
    """BCE + Dice + the peak term: weak labels around thin defects still get marked."""
    return bce_dice_loss(y_true, y_pred) + peak_loss(y_true, y_pred)


def focal_dice_peak_loss(y_true, y_pred):
    """Focal BCE + Dice + the peak term: the recipe's loss, with weak labels around thin
    defects asked to be marked at their brightest tenth."""
    return focal_dice_loss(y_true, y_pred) + peak_loss(y_true, y_pred)


_LOSSES: dict[str, Callable] = {
    "bce": bce_loss,
    "dice": dice_loss,
    "adaptive": adaptive_loss,
    "bce_dice": bce_dice_loss,
    "focal": focal_loss,
    "focal_dice": focal_dice_loss,
    "tversky": tversky_loss,
    "bce_tversky": bce_tversky_loss,
    "bce_dice_per_image": bce_dice_per_image_loss,
    "bce_dice_peak": bce_dice_peak_loss,
    "focal_dice_peak": focal_dice_peak_loss,
}
#: the names a recipe's ``loss`` key allows (training/config.py checks against them)
LOSS_NAMES = tuple(_LOSSES)


def get_loss(name: str) -> Callable:
    """The loss function a recipe's ``loss`` key names."""
    if name not in _LOSSES:
        msg = f"unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}"
        raise LossError(msg)
    return _LOSSES[name]
