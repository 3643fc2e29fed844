"""``lineside gate``: a backend's precision against ONNX Runtime FP32 on validation images,
recorded in the package's manifest under ``gates`` (``"openvino:bf16"``, ...).

The images are the ones ``lineside export`` gates FP16/INT8 on (the same split, so none of
them calibrated the INT8 graph), the comparison and its bounds are converter.gate's: FP16
bounds for fp32/bf16/fp16, INT8 bounds for int8. The line refuses (``backend: openvino``)
or skips (``backend: auto``) a precision whose gate failed or was never run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converter import onnx_graph
from converter import openvino_runtime as ovr
from converter.cpu import cpu_model
from converter.gate import FP16_BOUNDS, INT8_BOUNDS, GateReport, compare
from converter.package import ModelPackage, sha256_file
from converter.preprocessing import normalize
from converter.samples import SampleError, package_gate_sets

log = logging.getLogger(__name__)

BACKENDS = ("openvino", "onnxruntime")
#: the ONNX Runtime graphs ``lineside gate --backend onnxruntime`` may gate (and time) against FP32
ONNXRUNTIME_PRECISIONS = ("int8", "fp16")


def time_interleaved(runs: dict[str, Callable[[], object]], images: int, rounds: int = 5) -> dict[str, Any]:
    """img/s of each of ``runs`` (one call runs a batch of ``images``), interleaved rounds, medians.

    ``backend: auto`` trusts a speed only on the CPU model it was timed on: OpenVINO FP32 beat
    ONNX Runtime FP32 on an AVX2 EPYC (1.1x) and did not on an AMX Xeon (0.6x,
    docs/performance.md)."""
    rates: dict[str, list[float]] = {key: [] for key in runs}
    for fn in runs.values():
        fn()  # warm-up: first runs allocate
    for _ in range(rounds):
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            rates[key].append(images / (time.perf_counter() - start))
    result = {f"{key}_img_per_s": round(float(np.median(v)), 2) for key, v in rates.items()}
    return {**result, "batch": images, "rounds": rounds}


def _gate_images(package: ModelPackage, data_dir: str | Path | None, samples: int) -> tuple[Any, Any, str]:
    """The export's gate images (with an INT8 graph, its calibration images are left out),
    normalized and laid out as the graph takes them; the set itself (for names); the folder."""
    m = package.manifest
    calibration = (m.gates.get("int8") or {}).get("calibration", {}).get("images", 0)
    gate_set, _, data_dir = package_gate_sets(package, data_dir, samples, calibration)
    images = normalize(gate_set.images, m.normalization)
    if m.input.layout == "NCHW":
        images = images.transpose(0, 3, 1, 2)
    return images, gate_set, data_dir


def gate_onnxruntime(
    package_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    samples: int = 32,
    precision: str = "int8",
    batch: int = 8,
) -> tuple[GateReport, str]:
    """ONNX Runtime on ``precision``'s graph against its FP32 graph on this CPU: the accuracy
    gate (INT8 or FP16 bounds) and the speed of both, interleaved, recorded under
    ``gates["onnxruntime:<precision>"]`` with the CPU's model. ``model.precision: auto`` runs that
    graph where its gate passed and it was the faster one on this CPU model."""
    package = ModelPackage.open(package_dir)
    package.verify()
    m = package.manifest
    if precision not in ONNXRUNTIME_PRECISIONS:
        msg = f"ONNX Runtime gates {' or '.join(ONNXRUNTIME_PRECISIONS)} against fp32, not {precision}"
        raise SampleError(msg)
    if not package.has_precision(precision):
        msg = (
            f"{package.root}: the package has no {precision} graph; "
            f"add it with `lineside export CHECKPOINT --out {package.root} --precision {precision}`"
        )
        raise SampleError(msg)
    images, gate_set, data = _gate_images(package, data_dir, samples)
    fp32 = onnx_graph.session(package.onnx_path("fp32"))
    other = onnx_graph.session(package.onnx_path(precision))
    key = f"onnxruntime:{precision}"
    report = compare(
        onnx_graph.run_batches(fp32, images, batch),
        onnx_graph.run_batches(other, images, batch),
        name=f"{key} vs ONNX Runtime FP32",
        threshold=m.threshold,
        min_defect_area=m.min_defect_area,
        bounds=INT8_BOUNDS if precision == "int8" else FP16_BOUNDS,
        names=gate_set.names,
    )
    one = images[:batch]
    feeds = [{s.get_inputs()[0].name: one} for s in (fp32, other)]
    speed = time_interleaved(
        {
            "onnxruntime_fp32": lambda: fp32.run(None, feeds[0]),
            f"onnxruntime_{precision}": lambda: other.run(None, feeds[1]),
        },
        len(one),
        rounds=7,
    )
    record = report.to_dict()
    record.update(
        backend="onnxruntime",
        precision=precision,
        graph=m.files[precision],
        graph_sha256=sha256_file(package.onnx_path(precision)),
        cpu=cpu_model(),
        data=data,
        speed={"cpu": cpu_model(), **speed},
    )
    log.info(
        "on this CPU: ONNX Runtime %s %.1f img/s, FP32 %.1f img/s (batch %d)",
        precision,
        speed[f"onnxruntime_{precision}_img_per_s"],
        speed["onnxruntime_fp32_img_per_s"],
        speed["batch"],
    )
    m.gates[key] = record
    m.save(package.root)
    return report, key


def gate_openvino(
    package_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    samples: int = 32,
    device: str = "CPU",
    precision: str | None = None,
    batch: int = 8,
) -> tuple[GateReport, str]:
    """Gate OpenVINO on ``device`` in ``precision`` (default: the one this box would choose)
    and record the result in the manifest. Returns the report and the ``gates`` key."""
    package = ModelPackage.open(package_dir)
    package.verify()
    m = package.manifest
    facts = ovr.probe()
    ovr.check_device(facts, device)
    if precision is None:
        precision, why = ovr.choose_precision(facts, device, package.has_precision("int8"))
        log.info("OpenVINO on %s: %s (%s)", device, precision, why)
    allowed = ovr.supported_precisions(facts, device)
    if precision not in allowed:
        msg = (
            f"OpenVINO on {device} here does not compute in {precision} (it can: {', '.join(allowed)}); "
            "gate that precision on a box that has it"
        )
        raise ovr.OpenVINOError(msg)
    graph = ovr.GRAPHS[precision]
    if not package.has_precision(graph):
        msg = (
            f"{package.root}: {precision} runs the {graph} graph, which the package lacks; "
            f"run `lineside export --precision {graph}`"
        )
        raise ovr.OpenVINOError(msg)
    images, gate_set, data_dir = _gate_images(package, data_dir, samples)
    session = onnx_graph.session(package.onnx_path("fp32"))
    reference = onnx_graph.run_batches(session, images, batch)
    runner = ovr.OpenVINORunner(package.onnx_path(graph), device, precision)
    runner.load()
    try:
        candidate = [runner.infer(images[i : i + batch]) for i in range(0, len(images), batch)]
        speed = None
        if ovr.device_kind(device) == "CPU":
            one, name = images[:batch], session.get_inputs()[0].name
            speed = time_interleaved(
                {
                    "onnxruntime_fp32": lambda: session.run(None, {name: one}),
                    "openvino": lambda: runner.infer(one),
                },
                len(one),
            )
    finally:
        runner.free()
    key = ovr.gate_key(device, precision)
    report = compare(
        reference,
        np.concatenate(candidate),
        name=f"{key} vs ONNX Runtime FP32",
        threshold=m.threshold,
        min_defect_area=m.min_defect_area,
        bounds=INT8_BOUNDS if precision == "int8" else FP16_BOUNDS,
        names=gate_set.names,
    )
    record = report.to_dict()
    record.update(
        backend="openvino",
        device=device,
        precision=precision,
        graph=package.manifest.files[graph],
        graph_sha256=sha256_file(package.onnx_path(graph)),
        openvino=facts.version,
        cpu=facts.cpu_name,
        data=data_dir,
    )
    if speed is not None:
        record["speed"] = {"cpu": facts.cpu_name, **speed}
        log.info(
            "on this CPU: OpenVINO %s %.1f img/s, ONNX Runtime FP32 %.1f img/s (batch %d)",
            precision,
            speed["openvino_img_per_s"],
            speed["onnxruntime_fp32_img_per_s"],
            speed["batch"],
        )
    m.gates[key] = record
    m.save(package.root)
    return report, key
