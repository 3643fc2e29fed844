"""tf.data input pipelines: decode, resize, cache, crop, augment, normalize, batch, prefetch.

Normalization uses ``converter.preprocessing.NORMALIZATIONS`` so the line-side
preprocessing is the same arithmetic. Training data is a sequence of "epochs";
epoch ``e`` depends only on (seed, e): its shuffle order and every random crop and
augmentation use stateless ops seeded from (seed, e, position). Two runs with one
seed see the same batches, and a resumed run sees the batches the uninterrupted
run would have seen.
"""

from __future__ import annotations

import math
from typing import Any

from converter.preprocessing import NORMALIZATIONS, check_normalization
from training.datasets.base import Sample
from training.datasets.rle import rle_decode


def _columns(samples: list[Sample]) -> dict[str, list[Any]]:
    return {
        "image": [s.image for s in samples],
        "mask": [s.mask for s in samples],
        "rle": [s.rle for s in samples],
        "height": [s.height for s in samples],
        "width": [s.width for s in samples],
        "class_id": [s.class_id for s in samples],
    }


def _decode_fn(image_size: list[int] | None):
    """Map one record to (uint8 image HxWx1, uint8 mask HxWx1 in {0,1}, class_id)."""
    import numpy as np
    import tensorflow as tf

    def rle_mask(rle, height, width):
        return rle_decode(rle.decode(), int(height), int(width))[..., None]

    def decode(rec):
        image = tf.io.decode_image(tf.io.read_file(rec["image"]), channels=1, expand_animations=False)
        shape = tf.shape(image)

        def from_file():
            m = tf.io.decode_image(tf.io.read_file(rec["mask"]), channels=1, expand_animations=False)
            return tf.cast(m > 0, tf.uint8)

        def from_rle():
            m = tf.numpy_function(rle_mask, [rec["rle"], rec["height"], rec["width"]], tf.uint8)
            return tf.reshape(m, [rec["height"], rec["width"], 1])

        def empty():
            return tf.zeros([shape[0], shape[1], 1], tf.uint8)

        mask = tf.case(
            [(tf.strings.length(rec["mask"]) > 0, from_file), (tf.strings.length(rec["rle"]) > 0, from_rle)],
            default=empty,
        )
        if image_size is not None:
            image = tf.cast(tf.image.resize(image, image_size, method="area"), tf.uint8)
            mask = tf.image.resize(mask, image_size, method="nearest")
        return image, mask, rec["class_id"]

    del np
    return decode


def normalize(image, normalization: str):
    """uint8 (or float in [0, 255]) -> float32 ``p * scale + offset``, the line-side arithmetic."""
    import tensorflow as tf

    scale, offset = NORMALIZATIONS[normalization]
    return tf.cast(image, tf.float32) * scale + offset


def _crop(
    image, mask, size: int, defect_fraction: float, seed, hint=None, hard_negative_fraction: float = 0.0
):
    """A size x size crop; with probability ``defect_fraction`` it holds a defect pixel when there is one.

    ``hint`` is the (row, col) of the model's strongest false response in this image
    (``training.mining``; -1 = none): a clean image's crop is centred on it with
    probability ``hard_negative_fraction``, so the model sees the texture that fools it.
    """
    import tensorflow as tf

    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    # pad images smaller than the crop (reflect would invent texture at the edge of masks)
    pad_h, pad_w = tf.maximum(size - h, 0), tf.maximum(size - w, 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], mode="SYMMETRIC")
    mask = tf.pad(mask, [[0, pad_h], [0, pad_w], [0, 0]])
    h, w = h + pad_h, w + pad_w
    s = tf.random.experimental.stateless_split(seed, 4)
    u = tf.random.stateless_uniform([3], s[0])
    # Offsets are drawn from a range a quarter crop wider on each side and clipped, so
    # about a tenth of the crops touch each image edge. Uniform offsets almost never do
    # (1 in 353 for 160 of 512 px), yet every whole image the model scores has four edges:
    # without this, edges of streaky textures came out as false defects.
    margin = size // 4

    def offset(v, extent):
        span = tf.cast(extent - size + 1 + 2 * margin, tf.float32)
        return tf.clip_by_value(tf.cast(v * span, tf.int32) - margin, 0, extent - size)

    top, left = offset(u[0], h), offset(u[1], w)
    defect_pixels = tf.where(mask[..., 0] > 0)
    n_def = tf.shape(defect_pixels)[0]

    def around(cy, cx):
        # the point lands at size/4 .. 3*size/4 of the crop (clipping keeps it inside)
        jitter = tf.random.stateless_uniform([2], s[2], -size // 4, size // 4 + 1, dtype=tf.int32)
        t = tf.clip_by_value(cy - size // 2 + jitter[0], 0, h - size)
        l_ = tf.clip_by_value(cx - size // 2 + jitter[1], 0, w - size)
        return t, l_

    def around_defect():
        idx = tf.random.stateless_uniform([], s[1], 0, n_def, dtype=tf.int32)
        return around(tf.cast(defect_pixels[idx][0], tf.int32), tf.cast(defect_pixels[idx][1], tf.int32))

    top, left = tf.cond(tf.logical_and(n_def > 0, u[2] < defect_fraction), around_defect, lambda: (top, left))
    if hint is not None and hard_negative_fraction > 0:
        # s[3] was unused: drawing from it leaves every other crop as it was without mining
        aim = tf.random.stateless_uniform([], s[3]) < hard_negative_fraction
        hint = tf.cast(hint, tf.int32)
        use_hint = tf.logical_and(tf.logical_and(n_def == 0, hint[0] >= 0), aim)
        top, left = tf.cond(use_hint, lambda: around(hint[0], hint[1]), lambda: (top, left))
    return (
        tf.slice(image, [top, left, 0], [size, size, -1]),
        tf.slice(mask, [top, left, 0], [size, size, -1]),
    )


def _augment(image, mask, aug: dict[str, Any], seed, square: bool):
    """Flips, 90-degree rotations (square inputs only), brightness, contrast, and what real
    cameras add (small rotations and scale, defocus blur, gamma, sensor noise, gain with
    saturation, stuck pixels)
    where the recipe asks for it; image is float in [0, 255]."""
    import tensorflow as tf

    s = tf.random.experimental.stateless_split(seed, 4)
    u = tf.random.stateless_uniform([5], s[0])
    if aug["flip"]:
        image = tf.where(u[0] < 0.5, tf.reverse(image, [1]), image)
        mask = tf.where(u[0] < 0.5, tf.reverse(mask, [1]), mask)
        image = tf.where(u[1] < 0.5, tf.reverse(image, [0]), image)
        mask = tf.where(u[1] < 0.5, tf.reverse(mask, [0]), mask)
    if aug["rot90"] and square:
        k = tf.cast(u[2] * 4, tf.int32) % 4
        image, mask = tf.image.rot90(image, k), tf.image.rot90(mask, k)
    # The camera draws come from a stream of their own, so that the draws above (and so every
    # recipe without them) stay what they were.
    c = tf.random.stateless_uniform([6], s[2])
    if aug["rotate"] or aug["scale"]:
        angle = (c[0] * 2 - 1) * aug["rotate"] * (math.pi / 180)
        zoom = 1.0 + (c[1] * 2 - 1) * aug["scale"]
        image, mask = _rotate_scale(image, mask, angle, zoom)
    if aug["blur"]:
        # half the crops stay sharp: a camera is mostly in focus
        sigma = c[2] * aug["blur"]
        image = tf.cond(c[3] < 0.5, lambda: _gaussian_blur(image, sigma, aug["blur"]), lambda: image)
    if aug["gamma"]:
        gamma = tf.exp((c[4] * 2 - 1) * math.log(1.0 + aug["gamma"]))
        image = 255.0 * tf.pow(tf.clip_by_value(image, 0.0, 255.0) / 255.0, gamma)
    if aug["brightness"]:
        image = image + (u[3] * 2 - 1) * aug["brightness"] * 255.0
    if aug["contrast"]:
        factor = 1.0 + (u[4] * 2 - 1) * aug["contrast"]
        mean = tf.reduce_mean(image)
        image = (image - mean) * factor + mean
    if aug["noise"]:
        sigma = c[5] * aug["noise"]
        image = image + sigma * tf.random.stateless_normal(tf.shape(image), s[3])
    if aug["gain"]:
        # after the noise: the stored images carry their own noise, and more light on the line
        # turns their bright texture into flat white, which a model must not read as a defect
        g = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(s[2], 2))
        image = tf.clip_by_value(image * tf.exp((g * 2 - 1) * math.log(1.0 + aug["gain"])), 0.0, 255.0)
    if aug["stuck_pixels"]:
        # a stream folded from the camera one: the draws above stay what they were without it
        d = tf.random.experimental.stateless_fold_in(s[2], 1)
        share = tf.random.stateless_uniform([], d) * aug["stuck_pixels"]
        u = tf.random.stateless_uniform(tf.shape(image)[:2], tf.random.experimental.stateless_fold_in(d, 1))[
            ..., None
        ]
        # the first half of the stuck ones are hot, the rest dead; the mask does not change:
        # a stuck pixel is the camera's, not the part's
        image = tf.where(u < share / 2, 255.0, tf.where(u < share, 0.0, image))
    return tf.clip_by_value(image, 0.0, 255.0), mask


def _rotate_scale(image, mask, angle, zoom):
    """Rotate by ``angle`` (radians) and scale by ``zoom`` about the centre; the corners the
    turn uncovers are mirrored texture (not black, which would teach a false edge), and the
    mask follows by nearest neighbour so it stays binary."""
    import tensorflow as tf

    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # output (x, y) -> input (a0 x + a1 y + a2, b0 x + b1 y + b2): the inverse of the turn
    transform = tf.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy, 0.0, 0.0])[
        None
    ]

    def warp(x, how):
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(x, tf.float32)[None],
            transforms=transform,
            output_shape=shape[:2],
            fill_value=0.0,
            interpolation=how,
            fill_mode="REFLECT",
        )
        return tf.cast(out[0], x.dtype)

    return warp(image, "BILINEAR"), warp(mask, "NEAREST")


def _gaussian_blur(image, sigma, max_sigma: float):
    """A separable Gaussian blur of ``sigma`` pixels (a tensor up to ``max_sigma``), mirrored
    at the borders so that the edges do not darken."""
    import tensorflow as tf

    radius = max(1, math.ceil(3 * max_sigma))
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-(x**2) / (2 * tf.maximum(sigma, 1e-3) ** 2))
    k = k / tf.reduce_sum(k)
    channels = image.shape[-1] or 1
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    kernel_v = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, channels, 1])
    kernel_h = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, channels, 1])
    out = tf.nn.depthwise_conv2d(padded, kernel_v, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, kernel_h, [1, 1, 1, 1], "VALID")
    return out[0]


def decoded_dataset(
    samples: list[Sample], input_cfg: dict[str, Any], image_size: list[int] | None, cache: bool
):
    """(uint8 image, uint8 mask, class_id) per sample, decoded in parallel and optionally cached in memory."""
    import tensorflow as tf

    if not samples:
        from training.datasets.base import DatasetError

        msg = "the data set split is empty; check dataset.root, dataset.classes and only_defective_images"
        raise DatasetError(msg)
    ds = tf.data.Dataset.from_tensor_slices(_columns(samples))
    ds = ds.map(_decode_fn(image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    return ds


def train_dataset(
    samples: list[Sample],
    cfg: dict[str, Any],
    seed: int,
    start_epoch: int = 0,
    epochs: int | None = None,
    hints=None,
):
    """Batches of (normalized image, float mask) for epochs start_epoch .. start_epoch+epochs-1.

    ``hints`` is the int32 ``tf.Variable`` [len(samples), 2] of ``training.mining``, or None.
    Each element reads its sample's row when it is produced, so hints mined during training
    reach the batches after the few that ``prefetch`` and the parallel map already made.
    With ``input.defect_paste_fraction`` above 0, the labelled defects of these samples are
    pasted into crops without one (``training.paste``).
    """
    import tensorflow as tf

    inp = cfg["input"]
    check_normalization(inp["normalization"])
    steps, batch = cfg["train"]["steps_per_epoch"], inp["batch_size"]
    epochs = cfg["train"]["epochs"] - start_epoch if epochs is None else epochs
    # the sample's index, numbered before shuffling, looks up its mining hint
    base = decoded_dataset(samples, inp, cfg["dataset"]["image_size"], inp["cache"]).enumerate()
    crop, aug = inp["crop"], inp["augment"]
    n = len(samples)
    paste_fraction, bank = inp["defect_paste_fraction"], None
    if paste_fraction > 0:
        from training.paste import DefectBank

        bank = DefectBank.from_samples(
            samples, inp, cfg["dataset"]["image_size"], inp["paste_decoy_fraction"]
        )

    pseudo_fraction = inp["pseudo_defect_fraction"]
    # the data set's own label convention: DAGM's weak ellipse, or the defect's pixels
    ellipse = cfg["dataset"]["kind"] in ("dagm", "synthetic")

    def draw_pseudo(image, mask, seed):
        from training.pseudo import draw

        return draw(image, mask, int(seed), ellipse)

    def into_clean_crop(fn, fraction, stream, elem_seed, image, mask, *args):
        """``fn(image, mask, *args, seed)``, a numpy function, on ``fraction`` of the crops that
        hold no defect; its draws come from a stream of their own (folded in), so every other
        draw stays what it was."""
        p = tf.random.stateless_uniform([2], tf.random.experimental.stateless_fold_in(elem_seed, stream))

        def apply():
            fn_seed = tf.cast(p[1] * 2**31, tf.int64)
            out, out_mask = tf.numpy_function(
                fn, [image, mask, *args, fn_seed], [tf.float32, tf.uint8], stateful=False
            )
            return tf.ensure_shape(out, image.shape), tf.ensure_shape(out_mask, mask.shape)

        return tf.cond(
            tf.logical_and(p[0] < fraction, tf.reduce_max(mask) == 0), apply, lambda: (image, mask)
        )

    def one_epoch(epoch: int):
        """The epoch's (epoch, (position, (index, (image, mask, class_id)))) in its order."""
        # a Python-int seed per epoch: shuffle refuses tensor seeds once a global seed is set
        order_seed = (seed * 1_000_003 + epoch) % (2**31 - 1)
        ds = base.shuffle(n, seed=order_seed, reshuffle_each_iteration=True).repeat()
        ds = ds.take(steps * batch).enumerate()
        return tf.data.Dataset.zip(tf.data.Dataset.from_tensors(tf.constant(epoch, tf.int64)).repeat(), ds)

    def prepare(epoch, numbered):
        i, (index, (image, mask, class_id)) = numbered
        elem_seed = tf.stack([tf.constant(seed * 7919, tf.int64) + epoch, i])
        s = tf.random.experimental.stateless_split(elem_seed, 2)
        if crop:
            hint = None if hints is None else tf.gather(hints, index)  # the value now, not at build
            image, mask = _crop(
                image, mask, crop, inp["defect_crop_fraction"], s[0], hint, inp["hard_negative_fraction"]
            )
        image = tf.cast(image, tf.float32)
        if bank is not None and len(bank):
            image, mask = into_clean_crop(bank.paste, paste_fraction, 1, elem_seed, image, mask, class_id)
        if pseudo_fraction > 0:
            image, mask = into_clean_crop(draw_pseudo, pseudo_fraction, 2, elem_seed, image, mask)
        image, mask = _augment(image, mask, aug, s[1], square=bool(crop))
        return normalize(image, inp["normalization"]), tf.cast(mask, tf.float32)

    ds = one_epoch(start_epoch)
    for epoch in range(start_epoch + 1, start_epoch + max(epochs, 1)):
        ds = ds.concatenate(one_epoch(epoch))
    # One map over all the epochs, which carry their number: a map per epoch traced ``prepare``
    # once each (7 s for the tests' 40 epochs of a tiny recipe on 2 CPU cores).
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Every epoch holds steps x batch elements, so the batches are each epoch's own.
    # Whole images of different sizes cannot share a batch; crops (or a fixed image_size) can.
    ds = ds.batch(batch, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(samples: list[Sample], cfg: dict[str, Any], batch_size: int | None = None):
    """Whole images, normalized, batched: (image, mask, class_id); no augmentation."""
    import tensorflow as tf

    inp = cfg["input"]
    base = decoded_dataset(samples, inp, cfg["dataset"]["image_size"], cache=False)

    def prepare(image, mask, class_id):
        return normalize(image, inp["normalization"]), tf.cast(mask, tf.float32), class_id

    ds = base.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batch = batch_size or cfg["eval"]["batch_size"]
    if cfg["dataset"]["kind"] == "folders" and not cfg["dataset"]["image_size"]:
        batch = 1  # plain folders may mix image sizes, which cannot share a batch
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)
