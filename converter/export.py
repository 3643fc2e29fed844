"""``lineside export``: a trained model -> a model package (``model.onnx`` + ``manifest.json``).

The steps are small and run in order (Polygraphy loader style):

    open_checkpoint -> load_reference -> export_onnx -> check_parity -> write_manifest (+ graph sha256)
    [-> fp16 graph behind its gate] [-> int8 graph behind its gate] [-> folded uint8 variant]

``model.onnx`` is FP32 with a dynamic batch, a fixed H/W/C from ``training.json`` and
opset >= 17; its input is called ``image`` and its output ``probability``. Before the
package is written, ONNX Runtime is run against Keras/TensorFlow on sample images, and
the export is refused if they differ by more than ``atol``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from converter import instance_norm, onnx_graph
from converter.checkpoint import (
    Checkpoint,
    InputShape,
    Reference,
    load_reference,
    open_checkpoint,
    resolve_input_shape,
    run_name,
)
from converter.engine.manifest import version_tuple
from converter.errors import LinesideError
from converter.manifest import InputSpec, ModelManifest, OutputSpec
from converter.package import ModelPackage, sha256_file
from converter.preprocessing import check_normalization, normalize
from converter.samples import SampleError, Samples, find_pairs, load_samples

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "probability"
OPSET = 17
#: the oldest Keras whose ``Model.export(format="onnx")`` takes an input signature (3.8) and an
#: opset (3.12); pyproject.toml asks for it, and an older one gets ``check_keras_version``'s error
MIN_KERAS = (3, 12)
#: Keras vs ONNX Runtime FP32; measured ~1e-7 on TinyUNet, so 1e-4 only catches real breakage
DEFAULT_ATOL = 1e-4


class ExportError(LinesideError, RuntimeError):
    """The exported graph could not be made or does not match the source model."""


@dataclass
class ParityReport:
    """ONNX Runtime against the source framework on the same inputs."""

    images: int
    source: str
    max_abs_diff: float
    atol: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "source": self.source,
            "max_abs_diff": self.max_abs_diff,
            "atol": self.atol,
        }


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shaped the package, for the manifest."""
    versions = {}
    for name in (
        "lineside",
        "tensorflow",
        "tensorflow-cpu",
        "keras",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "numpy",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def check_keras_version(version: str) -> None:
    """Refuse, in one line with the fix, a Keras too old for the ONNX export this package uses:
    Keras 3.3.3 fails deep inside with "Model.export() got an unexpected keyword argument"."""
    if version_tuple(version) < MIN_KERAS:
        need = ".".join(map(str, MIN_KERAS))
        msg = (
            f"Keras {version} cannot export a model to ONNX at a chosen opset (Keras {need} can): "
            f"pip install -U 'keras>={need}'"
        )
        raise ExportError(msg)


def export_onnx(reference: Reference, checkpoint: Checkpoint, shape: InputShape, path: Path) -> None:
    """Convert the source model to ONNX at ``path`` with a dynamic batch and stable I/O names."""
    import onnx
    import tensorflow as tf

    # tf2onnx logs every folded constant at INFO; the user only needs our one summary line
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    spec = tf.TensorSpec((None, shape.height, shape.width, shape.channels), tf.float32, name=INPUT_NAME)
    raw = path.with_suffix(".raw.onnx")
    try:
        if checkpoint.kind == "keras":
            reference.model.export(
                str(raw), format="onnx", input_signature=[spec], opset_version=OPSET, verbose=False
            )
        else:
            import tf2onnx

            fn = tf.function(lambda x: reference.model(x), input_signature=[spec])
            tf2onnx.convert.from_function(fn, input_signature=[spec], opset=OPSET, output_path=str(raw))
    except LinesideError:
        raise
    except Exception as exc:  # tf2onnx raises anything from deep inside TensorFlow
        msg = f"{checkpoint.model_path}: conversion to ONNX failed ({type(exc).__name__}: {exc})"
        raise ExportError(msg) from exc
    model = onnx.load(str(raw))
    raw.unlink()
    # the instance norm as one op (a fused kernel; 2.6x BatchNorm's time a frame as arithmetic)
    fused = instance_norm.fuse_instance_norms(model)
    if fused:
        model = instance_norm.cancel_transposes(model)
        log.info("%d instance norm(s) as InstanceNormalization ops", fused)
    onnx_graph.rename_tensor(model, model.graph.input[0].name, INPUT_NAME)
    onnx_graph.rename_tensor(model, model.graph.output[0].name, OUTPUT_NAME)
    # one name for the batch axis of input and output (tf2onnx makes up two), as TensorRT/Polygraphy show it
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    model.doc_string = f"lineside export of {checkpoint.model_path.name}"
    # a per-image mean (model.standardize, an instance norm left as arithmetic) summed one axis
    # at a time: exact enough for the parity gate on real images (see split_wide_means)
    onnx_graph.split_wide_means(model)
    onnx.checker.check_model(model)
    onnx_graph.check_package_graph(model, path, shape.height, shape.width, shape.channels)
    onnx.save(model, str(path))


def sample_inputs(
    data_dir: str | Path | None,
    shape: InputShape,
    count: int,
    classes: list[int] | None = None,
    note: str = "no --data given",
) -> tuple[np.ndarray, str]:
    """uint8 images for the checks: real ones from ``data_dir``, else seeded noise; and a line
    saying which, with ``note`` saying where the images came from or why there are none."""
    if data_dir is not None:
        samples: Samples = load_samples(data_dir, shape.height, shape.width, shape.channels, count, classes)
        return samples.images, f"{len(samples)} images from {data_dir}" + (f" ({note})" if note else "")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, shape.height, shape.width, shape.channels), dtype=np.uint8)
    return images, f"{count} seeded random images ({note})"


def recorded_training_data(checkpoint: Checkpoint) -> tuple[str | None, str]:
    """The data set ``training.json`` records, if the checks can read it here, and what it is.

    Returns (root, "KIND ROOT"), or (None, why not): no training.json, a kind the checks
    cannot read (Severstal's CSV), or a folder that is gone or holds no images.
    """
    training = checkpoint.training if isinstance(checkpoint.training, dict) else {}
    dataset = training.get("dataset") if isinstance(training.get("dataset"), dict) else {}
    kind, root = dataset.get("kind", "?"), dataset.get("root")
    if not root:
        return None, "training.json records no data set" if training else "no training.json"
    # a synthetic set is written to disk in the DAGM layout, so it is real training data too
    recorded = f"{kind} {root}" + (" (synthetic)" if "synthetic" in dataset else "")
    if kind not in ("dagm", "folders"):
        return (
            None,
            f"training.json records {recorded}, which the checks cannot read (DAGM or images/+masks/)",
        )
    if not Path(root).is_dir():
        return None, f"training.json records {recorded}, which is not on this machine"
    try:
        find_pairs(root, dataset.get("classes") or None)
    except SampleError as exc:
        return None, f"training.json records {recorded}, which the checks cannot read ({exc})"
    return str(root), recorded


def _checks_data(source: Checkpoint, data_dir: str | Path | None) -> tuple[str | Path | None, str]:
    """The images for the parity check and the gates: ``--data``, else the recorded training data.

    Returns the folder (None: seeded random images for parity) and a note on where it came from.
    """
    if data_dir is not None:
        return data_dir, ""
    root, recorded = recorded_training_data(source)
    if root is not None:
        log.info("parity on the training data recorded in training.json: %s", recorded)
        return root, "the training data recorded in training.json"
    log.info("parity on seeded random images: %s; pass --data DATASET_DIR for real ones", recorded)
    return None, f"no --data given; {recorded}"


def check_parity(
    reference: Reference, onnx_path: Path, inputs: np.ndarray, source: str, atol: float = DEFAULT_ATOL
) -> ParityReport:
    """Run ONNX Runtime and the source model on the same float inputs; refuse a difference above atol."""
    sess = onnx_graph.session(onnx_path)
    # batch of 1 and a larger batch: proves the dynamic batch axis as well as the numbers
    parts = [onnx_graph.run_batches(sess, inputs[:1], 1)]
    if len(inputs) > 1:
        parts.append(onnx_graph.run_batches(sess, inputs[1:], 4))
    got = np.concatenate(parts)
    want = np.concatenate([reference.predict(inputs[i : i + 4]) for i in range(0, len(inputs), 4)])
    if got.shape != want.shape:
        msg = f"{onnx_path}: ONNX output shape {got.shape} differs from the source model's {want.shape}"
        raise ExportError(msg)
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    report = ParityReport(images=len(inputs), source=source, max_abs_diff=diff, atol=atol)
    if not np.isfinite(diff) or diff > atol:
        msg = (
            f"{onnx_path}: ONNX Runtime differs from the source model by {diff:.3g} (allowed {atol:g}) on "
            f"{source}; the exporter mis-converted an op: report it with the model, or pass --atol to accept"
        )
        raise ExportError(msg)
    log.info("export parity: max |onnxruntime - source| = %.3g over %s (allowed %g)", diff, source, atol)
    return report


def build_manifest(
    checkpoint: Checkpoint,
    shape: InputShape,
    *,
    model_id: str,
    normalization: str | None,
    threshold: float | None,
    min_defect_area: int | None,
    parity: ParityReport,
    onnx_sha256: str,
) -> ModelManifest:
    """Gather the manifest from training.json, the command line and the export checks;
    ``onnx_sha256`` is the hash of the ``model.onnx`` written beside it."""
    training = checkpoint.training
    normalization = normalization or training.get("normalization", "zero_one")
    try:
        check_normalization(normalization)
    except ValueError as exc:
        raise ExportError(f"{checkpoint.path}: {exc}") from None
    dataset = dict(training.get("dataset", {}))
    manifest = ModelManifest(
        model_id=model_id,
        architecture=str(training.get("architecture", "unknown")),
        input=InputSpec(name=INPUT_NAME, height=shape.height, width=shape.width, channels=shape.channels),
        output=OutputSpec(name=OUTPUT_NAME, activation="sigmoid", channels=1),
        normalization=normalization,
        threshold=float(threshold if threshold is not None else training.get("threshold", 0.5)),
        min_defect_area=int(
            min_defect_area if min_defect_area is not None else training.get("min_defect_area", 16)
        ),
        # chosen with the trained threshold: a threshold given here draws the mask at itself
        mask_threshold=training.get("mask_threshold") if threshold is None else None,
        dataset=dataset,
        metrics=dict(training.get("metrics", {})),
        source_checkpoint_sha256=checkpoint.sha256(),
        tool_versions=tool_versions(),
        files={"fp32": "model.onnx"},
        files_sha256={"model.onnx": onnx_sha256},
        gates={"export": parity.to_dict()},
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    # validate exactly as a reader will, so a bad threshold fails here and not on the line
    return ModelManifest.from_dict(manifest.to_dict(), source=f"manifest for {checkpoint.path}")


def export_package(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    model_id: str | None = None,
    height: int | None = None,
    width: int | None = None,
    channels: int | None = None,
    normalization: str | None = None,
    threshold: float | None = None,
    min_defect_area: int | None = None,
    samples: int = 8,
    atol: float = DEFAULT_ATOL,
    precisions: tuple[str, ...] = (),
    folded: bool = False,
    gate_samples: int = 32,
    calibration_samples: int = 32,
    int8_method: str | None = None,
    int8_target: str = "tensorrt",
    fp16_auto_keep: bool = True,
) -> ModelPackage:
    """Export ``checkpoint`` to a model package in ``out_dir`` and return it, opened.

    ``precisions`` adds ``"fp16"`` and/or ``"int8"`` graphs, each written only if it passes
    its accuracy gate on ``gate_samples`` images of ``data_dir`` (required for them); INT8
    is calibrated on ``calibration_samples`` other images with ``int8_method`` and laid out for
    ``int8_target`` (``tensorrt`` or ``onnxruntime``, see converter/int8.py).
    ``folded`` adds ``model.uint8.onnx`` (preprocessing and threshold inside the graph).
    The manifest's model id is ``model_id``, else the training run's name (``run_name``).
    """
    source = open_checkpoint(checkpoint)
    data_dir, data_note = _checks_data(source, data_dir)
    if precisions and data_dir is None:
        wanted = " ".join(precisions)
        msg = f"--precision {wanted} needs validation images ({data_note}); pass --data DATASET_DIR"
        raise ExportError(msg)
    if source.kind == "keras":
        import keras

        check_keras_version(keras.__version__)  # before anything is loaded or written
    log.info("loading %s (%s)", source.model_path, source.kind)
    reference = load_reference(source)
    shape = resolve_input_shape(source, reference.input_shape, height, width, channels)
    out = Path(out_dir)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    try:
        with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
            tmp_onnx = Path(tmp) / "model.onnx"
            log.info(
                "exporting to ONNX (opset %d, input %dx%dx%d, dynamic batch)", OPSET, *vars(shape).values()
            )
            export_onnx(reference, source, shape, tmp_onnx)
            classes = source.training.get("dataset", {}).get("classes")
            raw, described = sample_inputs(data_dir, shape, samples, classes, data_note)
            norm = normalization or source.training.get("normalization", "zero_one")
            parity = check_parity(reference, tmp_onnx, normalize(raw, norm), described, atol)
            manifest = build_manifest(
                source,
                shape,
                model_id=model_id or run_name(source),
                normalization=normalization,
                threshold=threshold,
                min_defect_area=min_defect_area,
                parity=parity,
                onnx_sha256=sha256_file(tmp_onnx),
            )
            os.replace(tmp_onnx, onnx_path)
    except BaseException:
        if made:  # a failed export leaves no empty package folder behind (nothing else is removed)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    # a re-export replaces the FP32 graph, so graphs and engines derived from the old one are stale
    for stale in ("model.fp16.onnx", "model.int8.onnx", "model.uint8.onnx"):
        (out / stale).unlink(missing_ok=True)
    manifest.save(out)
    package = ModelPackage.open(out)
    log.info("wrote %s (%.1f MB) and %s", onnx_path, onnx_path.stat().st_size / 1e6, out / "manifest.json")
    if precisions or folded:
        from converter.variants import add_variants

        package = add_variants(
            package,
            data_dir=data_dir,
            precisions=precisions,
            folded=folded,
            gate_samples=gate_samples,
            calibration_samples=calibration_samples,
            int8_method=int8_method,
            int8_target=int8_target,
            fp16_auto_keep=fp16_auto_keep,
        )
    return package
