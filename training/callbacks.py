"""Keras callbacks of ``lineside train``: a tqdm progress bar, per-epoch checkpoints and the history file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
WEIGHTS_FILE = "last.weights.h5"
OPTIMIZER_FILE = "last.optimizer.npz"
HISTORY_FILE = "history.json"


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


def make_progress_callback(steps_per_epoch: int, epochs: int):
    """A tqdm bar per epoch showing the running loss and Dice."""
    from tqdm.auto import tqdm

    class TqdmProgress(_keras_callback_base()):
        def on_epoch_begin(self, epoch, logs=None):
            self.bar = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{epochs}",
                unit="step",
                leave=True,
                mininterval=2.0,
            )

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)
            if logs:
                self.bar.set_postfix({k: f"{float(v):.4f}" for k, v in logs.items()}, refresh=False)

        def on_epoch_end(self, epoch, logs=None):
            self.bar.close()

    return TqdmProgress()


def load_state(output_dir: Path) -> dict[str, Any] | None:
    """The saved {"epoch", "step"} of an interrupted or finished run, or None."""
    path = output_dir / CHECKPOINT_DIR / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def restore(model, output_dir: Path) -> dict[str, Any] | None:
    """Load the last checkpoint's weights and optimizer state into a compiled ``model``."""
    state = load_state(output_dir)
    if state is None:
        return None
    ckpt = output_dir / CHECKPOINT_DIR
    opt = model.optimizer
    opt.build(model.trainable_variables)  # before load_weights, so the optimizer slots exist
    model.load_weights(str(ckpt / WEIGHTS_FILE))
    saved = np.load(ckpt / OPTIMIZER_FILE)
    values = [saved[f"v{i}"] for i in range(len(saved.files))]
    if len(values) != len(opt.variables):
        from converter.errors import LinesideError

        msg = f"checkpoint {ckpt} is from another model or optimizer; delete it or use another output_dir"
        raise LinesideError(msg)
    for var, value in zip(opt.variables, values, strict=True):
        var.assign(value)
    logger.info("resumed from %s: epoch %d, step %d", ckpt, state["epoch"], state["step"])
    return state


def make_checkpoint_callback(output_dir: Path):
    """Saves weights, optimizer state, {"epoch", "step"} and the history after every epoch (atomically)."""
    ckpt = output_dir / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    history_path = output_dir / HISTORY_FILE

    class EpochCheckpoint(_keras_callback_base()):
        def on_epoch_end(self, epoch, logs=None):
            model = self.model
            model.save_weights(str(ckpt / ("tmp." + WEIGHTS_FILE)))
            slots = {f"v{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)}
            np.savez(ckpt / ("tmp." + OPTIMIZER_FILE), **slots)
            (ckpt / ("tmp." + WEIGHTS_FILE)).replace(ckpt / WEIGHTS_FILE)
            (ckpt / ("tmp." + OPTIMIZER_FILE)).replace(ckpt / OPTIMIZER_FILE)
            history = json.loads(history_path.read_text()) if history_path.is_file() else []
            history = [h for h in history if h["epoch"] < epoch + 1]
            history.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
            history_path.write_text(json.dumps(history, indent=1) + "\n")
            state = {"epoch": epoch + 1, "step": int(np.asarray(model.optimizer.iterations))}
            tmp = ckpt / ("tmp." + STATE_FILE)
            tmp.write_text(json.dumps(state) + "\n")
            tmp.replace(ckpt / STATE_FILE)  # the state names the epoch only once its files are complete

    return EpochCheckpoint()
