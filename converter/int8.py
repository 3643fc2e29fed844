"""FP32 -> explicit Q/DQ INT8 ONNX graph with onnxruntime.quantization, behind the INT8 gate.

TensorRT 11 accepts INT8 only as QuantizeLinear/DequantizeLinear pairs in the graph
(its implicit calibrators are gone), and ONNX Runtime runs the same graph on the CPU,
so the INT8 decision is made and gated here, once, like FP16.

TensorRT's rules for explicit quantization shape the options: symmetric (zero-point 0)
INT8 activations and weights, per-channel weight scales, and Q/DQ only around the
compute-heavy ops (Conv, ConvTranspose, MatMul, Gemm) so TensorRT fuses each into an
INT8 kernel; biases and everything else stay in float. Calibration uses images disjoint from the
gate's, so the gate does not grade the calibration set.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path

import numpy as np

from converter import onnx_graph
from converter.gate import INT8_BOUNDS, GateBounds, GateError, run_gate

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: MinMax clips nothing: a rare bright defect must not saturate to the range of the background
DEFAULT_CALIBRATION = "minmax"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def _reader(images: np.ndarray, input_name: str):
    """An onnxruntime CalibrationDataReader over ``images``, one image per step."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Images(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next >= len(images):
                return None
            batch = images[self._next : self._next + 1]
            self._next += 1
            return {input_name: batch}

        def rewind(self) -> None:
            self._next = 0

    return _Images()


def quantize(fp32_model, calibration: np.ndarray, method: str = DEFAULT_CALIBRATION):  # -> onnx.ModelProto
    """Calibrate on ``calibration`` (normalized float32 NHWC) and return the Q/DQ INT8 graph."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        msg = f"unknown calibration method {method!r}; allowed: {', '.join(CALIBRATION_METHODS)}"
        raise ValueError(msg)
    input_name = fp32_model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="lineside-int8-") as tmp:
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        # a file, not the ModelProto: given a proto, quant_pre_process loses small initializers
        onnx.save(fp32_model, str(src))
        # graph cleanup + shape inference, as onnxruntime recommends before quantizing; its symbolic
        # pass needs sympy, which the base install lacks and ONNX's own inference makes unneeded here
        has_sympy = importlib.util.find_spec("sympy") is not None
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=not has_sympy)
        quantize_static(
            str(pre),
            str(out),
            _reader(calibration, input_name),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            # TensorRT's Q/DQ layers take INT8 (not the INT32 a quantized bias needs): biases stay float
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
        return onnx.load(str(out))


def make_int8(
    fp32_model,
    calibration: np.ndarray,
    images: np.ndarray,
    *,
    threshold: float,
    min_defect_area: int,
    bounds: GateBounds = INT8_BOUNDS,
    method: str = DEFAULT_CALIBRATION,
    names: list[str] | None = None,
    source: str = "model.onnx",
):  # -> tuple[onnx.ModelProto, GateReport]
    """Quantize, then gate against FP32 on ``images``; raise GateError if it fails."""
    log.info("INT8: calibrating on %d images (%s)", len(calibration), method)
    int8 = quantize(fp32_model, calibration, method)
    reference = onnx_graph.session(fp32_model.SerializeToString())
    candidate = onnx_graph.session(int8.SerializeToString())
    report = run_gate(
        reference,
        candidate,
        images,
        name="int8",
        threshold=threshold,
        min_defect_area=min_defect_area,
        bounds=bounds,
        names=names,
    )
    if not report.passed:
        others = [m for m in CALIBRATION_METHODS if m != method]
        msg = (
            f"{source}: the INT8 graph fails its gate ({'; '.join(report.reasons)}); try another calibration "
            f"method ({', '.join(others)}), more calibration images, or ship FP16"
        )
        raise GateError(msg)
    return int8, report
