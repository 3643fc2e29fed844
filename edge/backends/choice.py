"""Which backend a worker runs: ``backend: auto`` picks the fastest *gated* one on this box.

Ranking (docs/performance.md): TensorRT (an engine that fits this GPU, as
``converter.engine.select`` decides), then OpenVINO (installed, the device present, and the
precision it would run here passed its gate: ``lineside gate``), then ONNX Runtime with
``model.precision``'s graph (``auto``: INT8 where its gate passed and it was the faster here).
``backend: openvino`` refuses, in one line, what ``auto`` skips.

``plan_backend`` decides from facts already gathered (and is what ``lineside doctor``
shows); ``choose_backend`` gathers them and builds the backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.backends.base import Backend, BackendError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    """A backend decision: ``kind`` ("tensorrt", "openvino", "onnxruntime"), what it runs, why."""

    kind: str
    #: tensorrt: the plan; openvino / onnxruntime: the ONNX graph
    path: Path
    #: openvino / onnxruntime: the precision that runs
    precision: str
    reason: str
    device: str = "CPU"


def openvino_option(package: Any, device: str, facts: Any, auto: bool = True) -> tuple[str | None, str]:
    """The OpenVINO precision this box may run from ``package`` (gated), or None and why not.

    ``facts`` is ``converter.openvino_runtime.probe()``'s answer, or the OpenVINOError raised
    when OpenVINO is missing. Under ``auto``, FP32 on the CPU also has to have beaten ONNX
    Runtime FP32 when the gate timed both on this CPU model: both then compute in FP32, and
    which is faster depends on the CPU (OpenVINO 0.6x on an AMX Xeon, 1.1x on an AVX2 EPYC).
    """
    from converter import openvino_runtime as ovr

    if isinstance(facts, Exception):
        return None, str(facts)
    try:
        ovr.check_device(facts, device)
    except ovr.OpenVINOError as exc:
        return None, str(exc)
    precision, why = ovr.choose_precision(facts, device, package.has_precision("int8"))
    passed, gate = ovr.gate_state(package.manifest, device, precision)
    if not passed:
        fix = f"run `lineside gate {package.root} --backend openvino" + (
            f" --device {device}`" if device != "CPU" else "`"
        )
        return None, f"OpenVINO {device} would run {precision} ({why}) but {gate}; {fix}"
    if auto and precision == "fp32" and ovr.device_kind(device) == "CPU":
        slower = _slower_here(package.manifest.gates[ovr.gate_key(device, precision)], facts)
        if slower:
            return None, f"OpenVINO {device} fp32 ({why}): {gate}, but {slower}"
        speed = package.manifest.gates[ovr.gate_key(device, precision)]["speed"]
        gate += (
            f"; {speed['openvino_img_per_s']} img/s against ONNX Runtime FP32's "
            f"{speed['onnxruntime_fp32_img_per_s']} when gated on this CPU"
        )
    return precision, f"OpenVINO {facts.version} {device} {precision}: {why}; {gate}"


def _slower_here(gate: dict[str, Any], facts: Any) -> str:
    """Why OpenVINO FP32 is not known to be faster than ONNX Runtime FP32 here ("" when it is)."""
    speed = gate.get("speed") or {}
    ov, ort = speed.get("openvino_img_per_s"), speed.get("onnxruntime_fp32_img_per_s")
    if not ov or not ort:
        return "the gate timed no speed; re-run `lineside gate` on this box"
    if speed.get("cpu") != facts.cpu_name:
        where = f"{speed.get('cpu')!r}, not this {facts.cpu_name!r}"
        return f"the gate timed it on {where}; re-run `lineside gate` here"
    if ov < ort:
        return f"it ran {ov} img/s against ONNX Runtime FP32's {ort} img/s when gated on this CPU"
    return ""


#: ``model.precision: auto`` runs the INT8 graph only when it was at least this much faster than
#: FP32 where gated: below it the gain is within the timing's noise on a shared box, and INT8
#: still costs a little accuracy
INT8_MIN_GAIN = 1.05


def onnxruntime_precision(package: Any, wanted: str, cpu: str | None = None) -> tuple[str, str]:
    """The graph ONNX Runtime runs for ``model.precision`` (``wanted``), and why.

    ``auto`` runs the INT8 graph where ``lineside gate --backend onnxruntime`` passed it and
    timed it at least ``INT8_MIN_GAIN`` times faster than FP32 on this CPU model (``cpu``,
    default: this box's), and the graph is still the one it gated; FP32 otherwise. Any other
    value is run as configured."""
    if wanted != "auto":
        return wanted, f"model.precision {wanted}"
    from converter.cpu import cpu_model

    cpu = cpu or cpu_model()
    key = "onnxruntime:int8"
    gate = package.manifest.gates.get(key)
    if not package.has_precision("int8"):
        return "fp32", "auto: fp32 (the package has no INT8 graph)"
    if not gate:
        fix = f"run `lineside gate {package.root} --backend onnxruntime`"
        return "fp32", f"auto: fp32 (gate {key} was never run; {fix})"
    if not gate.get("passed"):
        return "fp32", f"auto: fp32 (gate {key} failed)"
    if gate.get("graph_sha256") != package.manifest.files_sha256.get(package.manifest.files["int8"]):
        return "fp32", f"auto: fp32 (the INT8 graph changed after gate {key}; run it again)"
    speed = gate.get("speed") or {}
    int8, fp32 = speed.get("onnxruntime_int8_img_per_s"), speed.get("onnxruntime_fp32_img_per_s")
    if speed.get("cpu") != cpu or not int8 or not fp32:
        return "fp32", f"auto: fp32 (gate {key} timed {speed.get('cpu')!r}, not this {cpu!r}; run it here)"
    if int8 < INT8_MIN_GAIN * fp32:
        return "fp32", (
            f"auto: fp32 (INT8 ran {int8} img/s against FP32's {fp32} when gated on this CPU, "
            f"not {INT8_MIN_GAIN:g}x faster)"
        )
    return "int8", f"auto: int8 (gate {key} passed; {int8} img/s against FP32's {fp32} on this CPU)"


def plan_backend(
    wanted: str,
    package: Any,
    *,
    precision: str = "auto",
    device: str = "CPU",
    engine: tuple[Path | None, str] = (None, "not looked for"),
    openvino: Any = None,
) -> Choice:
    """Decide the backend for ``wanted`` (auto, tensorrt, openvino, onnxruntime) from the facts:
    ``engine`` is ``select_engine``'s (plan, why), ``openvino`` the probe's facts or its error.
    Raises BackendError when an explicitly wanted backend cannot run, naming the fix."""
    plan, engine_why = engine
    if wanted in ("auto", "tensorrt") and plan is not None:
        return Choice("tensorrt", plan, "", f"tensorrt: {engine_why}")
    if wanted == "tensorrt":
        msg = (
            f"backend tensorrt requested but unusable: {engine_why}; set model.backend to auto or onnxruntime"
        )
        raise BackendError(msg)
    notes = [f"no usable TensorRT engine: {engine_why}"] if wanted == "auto" else []
    if wanted in ("auto", "openvino"):
        ov_precision, ov_why = openvino_option(package, device, openvino, auto=wanted == "auto")
        if ov_precision is not None:
            from converter.openvino_runtime import GRAPHS

            graph = package.onnx_path(GRAPHS[ov_precision])
            return Choice("openvino", graph, ov_precision, "; ".join([*notes, ov_why]), device)
        if wanted == "openvino":
            msg = f"backend openvino: {ov_why}; or set model.backend to auto or onnxruntime"
            raise BackendError(msg)
        notes.append(ov_why)
    ort_precision, ort_why = onnxruntime_precision(package, precision)
    if precision == "auto":
        notes.append(ort_why)
    reason = "onnxruntime " + (f"({'; '.join(notes)})" if notes else "(as configured)")
    return Choice("onnxruntime", package.onnx_path(ort_precision), ort_precision, reason)


def probe_openvino() -> Any:
    """OpenVINO's facts about this box, or the error saying why there are none."""
    from converter import openvino_runtime as ovr

    try:
        return ovr.probe()
    except ovr.OpenVINOError as exc:
        return exc
    except Exception as exc:  # a broken install raises anything: still one line
        return ovr.OpenVINOError(f"OpenVINO does not start here ({type(exc).__name__}: {exc})")


def choose_backend(cfg: Any, package: Any, machine: Any = None) -> tuple[Backend, str]:
    """The backend ``cfg.model`` asks for on this box, and why (for the log and the status).

    ``machine`` is the probed TensorRT machine (``converter.engine.machine``), if at hand.
    """
    wanted = cfg.model.backend
    engine: tuple[Path | None, str] = (None, "not looked for")
    if wanted in ("auto", "tensorrt"):
        from converter.engine.select import select_engine

        engine = select_engine(package, machine)
    # OpenVINO is imported only when it could be chosen: a TensorRT box never loads it
    facts = probe_openvino() if wanted == "openvino" or (wanted == "auto" and engine[0] is None) else None
    device = getattr(cfg.model, "device", "CPU")
    choice = plan_backend(
        wanted, package, precision=cfg.model.precision, device=device, engine=engine, openvino=facts
    )
    # the worker logs the reason with the backend's description; once is enough
    log.debug("backend %s chosen: %s", choice.kind, choice.reason)
    if choice.kind == "tensorrt":
        from edge.backends.trt import TensorRTBackend

        return TensorRTBackend.for_package(package, choice.path), choice.reason
    if choice.kind == "openvino":
        from converter.openvino_runtime import GRAPHS
        from edge.backends.openvino import OpenVINOBackend

        package.check_graph_io(GRAPHS[choice.precision])
        return OpenVINOBackend(choice.path, device, choice.precision, cfg.model.threads), choice.reason
    from edge.backends.onnxrt import OnnxRuntimeBackend

    return OnnxRuntimeBackend(choice.path, threads=cfg.model.threads), choice.reason
