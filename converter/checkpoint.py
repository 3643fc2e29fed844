"""Read what ``lineside export`` is given: a training checkpoint, a bare ``.keras``
file or a TensorFlow SavedModel, and what we know about its input.

A training checkpoint is a folder with ``model.keras`` and ``training.json`` (written
by ``lineside train``). A bare model or a SavedModel carries no ``training.json``, so
its input size comes from the model itself or from the command line.
TensorFlow is imported only by :func:`load_reference`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import LinesideError
from converter.schema import read_json_object

TRAINING_JSON = "training.json"


class CheckpointError(LinesideError, ValueError):
    """The checkpoint to export is missing, unreadable or lacks what the package needs."""


@dataclass
class Checkpoint:
    """A model to export and the facts about it that the manifest needs."""

    path: Path
    #: "keras" (a .keras file) or "savedmodel" (a folder with saved_model.pb)
    kind: str
    model_path: Path
    #: the training.json content, or {} for a bare model
    training: dict[str, Any] = field(default_factory=dict)

    def sha256(self) -> str:
        """Hash of the model file(s), so a package names exactly what it came from."""
        digest = hashlib.sha256()
        files = [self.model_path] if self.model_path.is_file() else sorted(self.model_path.rglob("*"))
        for path in files:
            if path.is_file():
                digest.update(str(path.relative_to(self.model_path.parent)).encode())
                digest.update(path.read_bytes())
        return digest.hexdigest()


def _read_training_json(folder: Path) -> dict[str, Any]:
    path = folder / TRAINING_JSON
    if not path.is_file():
        return {}
    return read_json_object(path, fix="re-run `lineside train` or fix the file", error=CheckpointError)


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Find the model inside ``path`` (checkpoint folder, .keras file or SavedModel)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".keras":
            msg = f"{path}: not a .keras file; pass a checkpoint folder, a .keras file or a SavedModel folder"
            raise CheckpointError(msg)
        return Checkpoint(path=path, kind="keras", model_path=path, training=_read_training_json(path.parent))
    if not path.is_dir():
        msg = f"{path}: no such checkpoint; pass the folder written by `lineside train`"
        raise CheckpointError(msg)
    if (path / "saved_model.pb").is_file():
        training = _read_training_json(path) or _read_training_json(path.parent)
        return Checkpoint(path=path, kind="savedmodel", model_path=path, training=training)
    training = _read_training_json(path)
    model_file = path / str(training.get("model_file", "model.keras"))
    if model_file.is_file():
        return Checkpoint(path=path, kind="keras", model_path=model_file, training=training)
    for sub in ("saved_model", "savedmodel"):
        if (path / sub / "saved_model.pb").is_file():
            return Checkpoint(path=path, kind="savedmodel", model_path=path / sub, training=training)
    msg = (
        f"{path}: found neither {model_file.name} nor saved_model.pb; is this a `lineside train` checkpoint?"
    )
    raise CheckpointError(msg)


def run_name(checkpoint: Checkpoint) -> str:
    """The training run's name: the model id a package gets unless ``--model-id`` names one.

    The recipe's ``name`` that training.json records (``recipe``), else the name of the run's
    folder: the one that holds training.json (the checkpoint folder, or the folder above a
    .keras file or a SavedModel); without one, the .keras file's stem or the SavedModel's
    folder. Never the export's output folder, which is usually just ``package``.
    """
    recipe = checkpoint.training.get("recipe")
    if isinstance(recipe, str) and recipe.strip():
        return recipe.strip()
    path = checkpoint.path.resolve()
    for folder in ([path] if path.is_dir() else []) + [path.parent]:
        if (folder / TRAINING_JSON).is_file():
            return folder.name
    if path.is_file():
        return path.stem
    return path.parent.name if path.name in ("saved_model", "savedmodel") else path.name


@dataclass
class InputShape:
    """Fixed spatial size of the exported graph (the batch stays dynamic)."""

    height: int
    width: int
    channels: int


def resolve_input_shape(
    checkpoint: Checkpoint,
    model_shape: tuple[int | None, ...] | None,
    height: int | None = None,
    width: int | None = None,
    channels: int | None = None,
) -> InputShape:
    """Pick H/W/C: command line first, then training.json, then the model's own input shape."""
    declared = checkpoint.training.get("input", {}) if isinstance(checkpoint.training, dict) else {}
    dims = list(model_shape[1:]) if model_shape is not None and len(model_shape) == 4 else [None, None, None]
    values = {}
    for i, (key, given) in enumerate((("height", height), ("width", width), ("channels", channels))):
        value = given or declared.get(key) or dims[i]
        if not isinstance(value, int) or value <= 0:
            msg = (
                f"{checkpoint.path}: the {key} of the model input is unknown (the model accepts any size "
                f"and there is no {TRAINING_JSON}); pass --{key}"
            )
            raise CheckpointError(msg)
        if dims[i] is not None and dims[i] != value:
            msg = f"{checkpoint.path}: the model input {key} is {dims[i]} but {value} was asked for"
            raise CheckpointError(msg)
        values[key] = value
    return InputShape(**values)


@dataclass
class Reference:
    """The source model loaded in TensorFlow: what ONNX Runtime is checked against."""

    #: float32 NHWC batch -> float32 probabilities, as the source framework computes them
    predict: Callable[[np.ndarray], np.ndarray]
    #: the model's declared input shape (None where dynamic)
    input_shape: tuple[int | None, ...] | None
    #: the object the ONNX exporter takes (a Keras model or a tf.function)
    model: Any


def load_reference(checkpoint: Checkpoint) -> Reference:
    """Load the checkpoint in Keras/TensorFlow (imported here, not at module level)."""
    try:
        import keras
        import tensorflow as tf
    except ImportError:
        msg = "exporting needs TensorFlow and Keras; install them with `pip install 'lineside[train]'`"
        raise CheckpointError(msg) from None
    if checkpoint.kind == "keras":
        try:
            model = keras.models.load_model(checkpoint.model_path, compile=False)
        except Exception as exc:  # keras raises many kinds for a bad file
            msg = f"{checkpoint.model_path}: Keras cannot load this model ({exc})"
            raise CheckpointError(msg) from None
        shape = tuple(model.inputs[0].shape) if model.inputs else None
        return Reference(
            predict=lambda x: np.asarray(model(x, training=False)), input_shape=shape, model=model
        )
    try:
        loaded = tf.saved_model.load(str(checkpoint.model_path))
        signature = loaded.signatures["serving_default"]
    except Exception as exc:  # tf raises many kinds for a bad folder
        msg = f"{checkpoint.model_path}: TensorFlow cannot load this SavedModel's serving_default ({exc})"
        raise CheckpointError(msg) from None
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        msg = f"{checkpoint.model_path}: serving_default takes {len(inputs)} inputs; lineside needs one image"
        raise CheckpointError(msg)
    ((input_key, spec),) = inputs.items()
    output_key = sorted(signature.structured_outputs)[0]

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(signature(**{input_key: tf.constant(batch)})[output_key])

    # keep `loaded` alive: the signature's variables belong to it
    predict.loaded = loaded  # type: ignore[attr-defined]
    return Reference(predict=predict, input_shape=tuple(spec.shape), model=signature)
