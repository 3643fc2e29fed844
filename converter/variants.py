"""Add the gated variants to a model package: ``model.fp16.onnx``, ``model.int8.onnx``,
``model.uint8.onnx``. Each is written only after it passed its check on validation
images; the manifest records the file, its sha256 and the gate report.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from converter import onnx_graph
from converter.package import ModelPackage, sha256_file
from converter.preprocessing import normalize
from converter.samples import package_gate_sets

log = logging.getLogger(__name__)

FILES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx", "uint8": "model.uint8.onnx"}


def _save(model, path: Path) -> str:
    """Write ``model`` to ``path`` atomically; returns the sha256 the manifest records for it."""
    import onnx

    tmp = path.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    digest = sha256_file(tmp)
    os.replace(tmp, path)  # a reader never sees half a graph
    return digest


def add_variants(
    package: ModelPackage,
    *,
    data_dir: str | Path | None,
    precisions: tuple[str, ...] = ("fp16",),
    folded: bool = False,
    gate_samples: int = 32,
    calibration_samples: int = 32,
    fp16_auto_keep: bool = True,
    int8_method: str | None = None,
    int8_target: str = "tensorrt",
) -> ModelPackage:
    """Make, gate and write the requested variants of ``package``; returns it re-opened.

    Raises GateError when a graph fails its gate: nothing is written for that precision, and
    the variants that passed before it stay written and recorded in the manifest.
    """
    m = package.manifest
    if not precisions and not folded:
        return package
    unknown = sorted(set(precisions) - {"fp16", "int8"})
    if unknown:
        msg = f"unknown precision(s) {', '.join(unknown)}; allowed: fp16, int8"
        raise ValueError(msg)
    fp32 = onnx_graph.load(package.onnx_path("fp32"))
    gate_set, calib_set, data_dir = package_gate_sets(
        package, data_dir, gate_samples, calibration_samples if "int8" in precisions else 0
    )
    log.info("gates run on %d images from %s", len(gate_set), data_dir)
    images = normalize(gate_set.images, m.normalization)
    common = {"threshold": m.threshold, "min_defect_area": m.min_defect_area, "names": gate_set.names}
    if "fp16" in precisions:
        from converter.fp16 import make_fp16

        model, report = make_fp16(
            fp32, images, auto_keep=fp16_auto_keep, source=str(package.onnx_path()), **common
        )
        digest = _save(model, package.root / FILES["fp16"])
        m.record_file("fp16", FILES["fp16"], digest)
        m.gates["fp16"] = report.to_dict()
        m.save(package.root)  # a later gate failing must not orphan this graph
    if "int8" in precisions:
        from converter.int8 import DEFAULT_CALIBRATION, make_int8

        calibration = normalize(calib_set.images, m.normalization)
        model, report = make_int8(
            fp32,
            calibration,
            images,
            method=int8_method or DEFAULT_CALIBRATION,
            target=int8_target,
            source=str(package.onnx_path()),
            **common,
        )
        digest = _save(model, package.root / FILES["int8"])
        gate = report.to_dict()
        gate["calibration"] = {"images": len(calib_set), "method": int8_method or DEFAULT_CALIBRATION}
        # a graph laid out for onnxruntime (uint8 activations) is not one TensorRT can build
        gate["target"] = int8_target
        m.record_file("int8", FILES["int8"], digest)
        m.gates["int8"] = gate
        m.save(package.root)
    if folded:
        from converter.folded import check_fold, fold

        model = fold(fp32, m.normalization, m.threshold)
        report = check_fold(fp32, model, gate_set.images, m.normalization, m.threshold)
        digest = _save(model, package.root / FILES["uint8"])
        m.record_file("uint8", FILES["uint8"], digest)
        m.gates["uint8"] = report.to_dict()
        m.save(package.root)
    return ModelPackage.open(package.root)
