"""Online hard-negative mining: aim some crops of clean images at what the model mistakes for a defect.

On photographed textures (grass, gravel, brick) a model trained on random crops raised
confident false alarms on clean texture that looks like a defect (big stones, leaves): a
random crop rarely holds one. With ``input.hard_negative_fraction`` > 0, the callback of
``make_miner`` runs the current model over the clean training images (whole, normalized as
for evaluation) at the start of training and after every ``input.mining_every`` epochs, and
writes where each image's probability map peaks into a ``tf.Variable`` table; the
training pipeline (``training.pipeline._crop``) centres that fraction of the clean crops
on the peak. The table is saved as ``checkpoints/mining.npz`` so that a resumed run crops
with the hints the uninterrupted run had.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.datasets.base import Sample

logger = logging.getLogger(__name__)

#: clean images one pass scores at most; larger sets are scored in turns of this many. Each
#: pass stops training for about cap x (one whole image through the model): 0.7 s per 512 px
#: image for TinyUNet-32 on the busy 2-core CPU, so 1.5 min at this cap, against about a minute
#: per epoch of 100 steps there. 256 would have doubled the time spent mining.
MAX_IMAGES_PER_PASS = 128
MINING_FILE = "mining.npz"
#: a hint at a probability above this is a false alarm at the usual threshold (counted in the log)
ALARM = 0.5


def make_hints(n_samples: int):
    """The [n_samples, 2] int32 (row, col) table the pipeline reads, all -1 (no hint)."""
    import tensorflow as tf

    # on the CPU, where tf.data runs, outside any distribution strategy: one plain copy
    with tf.device("/CPU:0"):
        return tf.Variable(tf.fill([n_samples, 2], -1), trainable=False, name="mining_hints")


def clean_indices(samples: list[Sample]) -> list[int]:
    """Positions of the training images without a defect: the only ones whose crops are aimed."""
    return [i for i, s in enumerate(samples) if not s.defective]


def pass_indices(clean: list[int], pass_number: int, cap: int = MAX_IMAGES_PER_PASS) -> list[int]:
    """The clean images pass ``pass_number`` scores: all of them, or the next ``cap`` in turn.

    Taking them in turn (not at random) makes a pass depend on its number only, so a resumed
    run scores what the uninterrupted one did, and successive passes cover the whole set.
    """
    if len(clean) <= cap:
        return list(clean)
    start = (pass_number * cap) % len(clean)
    return [clean[(start + k) % len(clean)] for k in range(cap)]


def peak_function(model):
    """A compiled ``images -> ((row, col) [n, 2] int32, probability [n])`` of each image's highest response.

    The argmax rather than the centroid of the largest region above 0.5: it exists on every
    image (also before the model raises any alarm), costs nothing beyond the forward pass,
    and always lies on the texture that scored highest; a centroid needs connected components
    per image and can fall outside a curved region. The crop's jitter (a quarter crop) keeps
    the region around the peak in view either way. Compiled, the pass took 0.7 s per 512 px
    image for TinyUNet-32 on the busy 2-core CPU, against 1.2 s calling the model eagerly.
    """
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def peaks(images):
        prob = tf.cast(model(images, training=False), tf.float32)[..., 0]
        flat = tf.reshape(prob, [tf.shape(prob)[0], -1])
        index = tf.argmax(flat, axis=1, output_type=tf.int32)  # ties: the first, on the CPU
        width = tf.shape(prob)[2]
        return tf.stack([index // width, index % width], axis=1), tf.reduce_max(flat, axis=1)

    return peaks


def strongest_responses(peaks, samples: list[Sample], cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each image's highest probability, [n, 2] int32, and that probability, [n].

    The images are whole and normalized as for evaluation (``pipeline.eval_dataset``);
    ``peaks`` is a ``peak_function``.
    """
    from training.models import check_model_input
    from training.pipeline import eval_dataset

    points, values = [], []
    for images, _, _ in eval_dataset(samples, cfg):
        if not points:  # the message evaluation would give, before the model fails on the size
            check_model_input(cfg["model"], int(images.shape[1]), int(images.shape[2]))
        where, peak = peaks(images)
        points.append(np.asarray(where))
        values.append(np.asarray(peak))
    return np.concatenate(points).astype(np.int32), np.concatenate(values)


def restore_hints(hints, ckpt_dir: Path, start_epoch: int, every: int) -> bool:
    """Load the saved table when it is the one the uninterrupted run used at ``start_epoch``.

    That run last mined after epoch ``start_epoch - start_epoch % every`` (0: at its start).
    Otherwise (no file, a table of another epoch or size) the caller mines afresh: the same
    pass when one was due at ``start_epoch`` (the restored weights are the ones it scored,
    also when a finished run is extended), else with a warning, as those hints are lost.
    """
    path = ckpt_dir / MINING_FILE
    expected = start_epoch - start_epoch % every
    table, epoch = None, None
    if path.is_file():
        with np.load(path) as saved:
            table, epoch = saved["hints"], int(saved["epoch"])
    if epoch != expected or table.shape != tuple(hints.shape):
        if expected != start_epoch:
            logger.warning(
                "%s: no hints mined after epoch %d, which this run resuming at epoch %d would use; "
                "mining afresh",
                path,
                expected,
                start_epoch,
            )
        return False
    hints.assign(table)
    logger.info("hard-negative mining: resumed with the hints mined after epoch %d", epoch)
    return True


def make_miner(samples: list[Sample], cfg: dict[str, Any], hints, ckpt_dir: Path, start_epoch: int = 0):
    """A Keras callback that mines at the start of training and after every ``input.mining_every``-th epoch.

    ``samples`` are the training samples in the order ``train_dataset`` numbers them (the
    rows of ``hints``); ``ckpt_dir`` receives ``mining.npz`` after every pass. Put it after
    the time-budget callback: it skips the pass after the run's last epoch. Its
    ``last_pass`` says what the last pass did ({epoch, images, seconds, alarms}).
    """
    import keras  # here, not at import: the CLI's help must not load Keras

    every = cfg["input"]["mining_every"]
    clean = clean_indices(samples)
    ckpt_dir = Path(ckpt_dir)

    class HardNegativeMiner(keras.callbacks.Callback):
        last_pass: dict[str, Any] | None = None
        _peaks = None  # compiled once per model, reused by every pass

        def on_train_begin(self, logs=None):
            if not clean:
                logger.warning("hard-negative mining: no clean training image, nothing to mine")
            elif not restore_hints(hints, ckpt_dir, start_epoch, every):
                self.mine(start_epoch)

        def on_epoch_end(self, epoch, logs=None):
            done = epoch + 1
            last = done >= self.params.get("epochs", done) or getattr(self.model, "stop_training", False)
            if clean and done % every == 0 and not last:  # after the last epoch nothing would use it
                self.mine(done)

        def mine(self, epoch: int) -> None:
            """Score one pass of clean images with the current model, update and save the hints."""
            started = time.perf_counter()
            chosen = pass_indices(clean, epoch // every)
            if self._peaks is None:
                self._peaks = peak_function(self.model)
            points, peaks = strongest_responses(self._peaks, [samples[i] for i in chosen], cfg)
            table = np.asarray(hints.numpy())
            table[chosen] = points
            hints.assign(table)
            _save(ckpt_dir, table, epoch)
            seconds = time.perf_counter() - started
            alarms = int(np.count_nonzero(peaks > ALARM))
            self.last_pass = {"epoch": epoch, "images": len(chosen), "seconds": seconds, "alarms": alarms}
            logger.info(
                "hard-negative mining after epoch %d: %d clean images in %.1f s, %d with p > %.1f (max %.2f)",
                epoch,
                len(chosen),
                seconds,
                alarms,
                ALARM,
                float(peaks.max()),
            )

    return HardNegativeMiner()


def _save(ckpt_dir: Path, table: np.ndarray, epoch: int) -> None:
    """Write the table and the epoch it was mined after (atomically, like the checkpoint)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / ("tmp." + MINING_FILE)
    np.savez(tmp, hints=table, epoch=np.int64(epoch))
    tmp.replace(ckpt_dir / MINING_FILE)
