"""FP32 -> explicit Q/DQ INT8 ONNX graph with onnxruntime.quantization, behind the INT8 gate.

TensorRT 11 accepts INT8 only as QuantizeLinear/DequantizeLinear pairs in the graph
(its implicit calibrators are gone), and ONNX Runtime runs the same graph on the CPU,
so the INT8 decision is made and gated here, once, like FP16.

TensorRT's rules for explicit quantization shape the options: symmetric (zero-point 0)
INT8 activations and weights, per-channel weight scales, and Q/DQ only around the
compute-heavy ops (Conv, ConvTranspose, MatMul, Gemm) so TensorRT fuses each into an
INT8 kernel; biases and everything else stay in float. Calibration uses images disjoint from the
gate's, so the gate does not grade the calibration set.

The layer that reads the image (the first Conv; ``image_layers``) stays in float, as is common
practice for a network's first layer: it is the layer whose rounding the decision cannot absorb.
With BatchNorm folded in, its 3x3 kernels are large (|w| up to 8 on the project's TinyUNet) and
nearly cancel (a kernel's sum is 2-66 % of the sum of its |w|): they pass the local contrast of a
defect and subtract the bright background, so the weights' rounding leaves each channel a gain on
the background that the later layers read as contrast. Measured on the project's TinyUNet (the
test recipe; its 24 gate and 96 training images; "logit error" = mean |INT8 - FP32 logit| where
FP32 is within 2 of the threshold's logit): quantizing that Conv alone gave 0.35, every other Conv
alone 0.14 at most (18 of 22 under 0.05); its weights made nearly all of it (0.35; its input 0.11,
its output 0.08), and 8-bit weights did no better (0.39). Keeping it in float took the logit error
of the whole graph from 0.46 to 0.41, 0.36 to 0.13, 0.15 to 0.09 and 0.39 to 0.12 on four such
models (seeds 0-3), and the FP32/INT8 decisions then differed on 0, 0, 0 and 1 of the 120 images
instead of 4, 1, 0 and 3. It costs little: one input channel (three for RGB) makes it 0.9 % of
that TinyUNet's multiply-adds (2.7 % of the converter tests' model), and TensorRT runs it in float
up to the next Conv's Q. Also keeping the last (logit) Conv in float changed the logit error by at
most 3 %. Leaving every Conv output unquantized (Q/DQ on inputs only) lowered it further on two of
the models (0.41 to 0.20, 0.13 to 0.09), but then ONNX Runtime cannot fuse the Convs into int8
kernels and the graph ran 40 % slower on the CPU than with output Q/DQ.

Weights use 7 bits of the INT8 range (``reduce_range``: integers in [-64, 64]) so that the graph
is also right in ONNX Runtime on x86 CPUs without VNNI, where the line's CPU backend may run it.
On x86, ONNX Runtime turns the int8 activations into uint8 (zero point 128) and, without VNNI,
its U8S8 kernels add each pair of uint8 x int8 products in int16 (VPMADDUBSW), which saturates
when 2 x 255 x |w| > 32767, i.e. with full 8-bit weights; with |w| <= 64 a pair stays <= 32640.
With 8-bit weights, the INT8 gate failed on an AVX2-only CPU (Dice 0.20, agreement 56 %) while
the same graph passed with ONNX Runtime's graph optimizations off (no fused int8 kernels).
TensorRT accumulates in int32 and takes these like any other symmetric INT8 weights.

``target="onnxruntime"`` (``lineside export --int8-target onnxruntime``) lays the graph out for
ONNX Runtime's CPU provider instead; the TensorRT layout ran there at 0.8-1.15x of FP32. With
symmetric activations every Relu stays in float between a DQ and a Q (zero point 0 cannot clamp
at 0), and the DQ -> Unsqueeze -> Tile -> Reshape -> Q of each Keras UpSampling2D runs in float
too, so the line ran 22 QLinearConv among 26 float DQ/Q pairs, 21 float Relus and 18 Transposes
(to and from the NHWC int8 kernels). The onnxruntime layout quantizes activations to uint8 with
a zero point, so a Relu's output gets zero point 0 and the quantizer folds the Relu into the
Conv's Q; Relu, MaxPool and Concat are quantized (ONNX Runtime runs NhwcMaxPool and
QLinearConcat), and ``sink_dequantize`` moves each DQ below the element moves of the upsampling,
exactly. ONNX Runtime then runs one Q after the float image Conv, 22 QLinearConv and one DQ
before the Sigmoid. TensorRT cannot build it (uint8 Q/DQ, zero points not 0), so the gate
records ``target``. Weights stay 7-bit for the reason above: on AVX2 the uint8 activations
reach 255 at zero point 0. Measurements: docs/converter.md.
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
#: what the INT8 graph is laid out for (module docstring): TensorRT's symmetric INT8, or the
#: uint8-activation form ONNX Runtime's CPU kernels run end to end in 8 bits
TARGETS = ("tensorrt", "onnxruntime")
DEFAULT_TARGET = "tensorrt"
#: onnxruntime target: the activation and the ops ONNX Runtime's CPU provider runs in 8 bits
#: (QLinearConcat, NhwcMaxPool); Relu is folded into the Conv's output Q by a zero point of 0
ORT_QUANTIZED_OPS = (*QUANTIZED_OPS, "Relu", "MaxPool", "Concat")
#: ops that only move or copy elements: a per-tensor DequantizeLinear commutes with them
_MOVERS = ("Tile", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Flatten", "Expand")
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


def image_layers(model) -> list[str]:
    """Names of the compute-heavy nodes that read the graph input with no other one before them.

    The input's data is followed through every other node (Transpose, Reshape, Mul, Concat...)
    but not through Shape/Size, whose outputs are only sizes.
    """
    initializers = {i.name for i in model.graph.initializer}
    reached = {i.name for i in model.graph.input if i.name not in initializers}
    found = []
    for node in model.graph.node:  # ONNX keeps nodes in topological order
        if not reached.intersection(node.input) or node.op_type in ("Shape", "Size"):
            continue
        if node.op_type in QUANTIZED_OPS:
            found.append(node.name)
        else:
            reached.update(node.output)
    return found


def _name_nodes(model) -> bool:
    """Give every unnamed node a unique name (nodes_to_exclude works by name); True if any was named."""
    names = {n.name for n in model.graph.node}
    named = False
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"lineside_{node.op_type}_{index}"
            while node.name in names:
                node.name += "_"
            names.add(node.name)
            named = True
    return named


def _params(model, node) -> tuple | None:
    """(scale, zero point) of a per-tensor Q/DQ ``node`` as Python values; None if per-channel."""
    from onnx import numpy_helper

    consts = {i.name: i for i in model.graph.initializer}
    values = []
    for name in node.input[1:3]:
        if name not in consts:
            return None
        array = numpy_helper.to_array(consts[name])
        if array.size != 1:
            return None
        values.append((array.dtype.str, array.item()))
    return tuple(values) if len(values) == 2 else None


def sink_dequantize(model) -> int:
    """Move per-tensor DequantizeLinear nodes below the ops that only move elements, in place.

    ``DQ -> Unsqueeze -> Tile -> Reshape -> Q`` (a Keras UpSampling2D) becomes
    ``Unsqueeze -> Tile -> Reshape -> DQ -> Q`` on the 8-bit tensor, and a DQ -> Q pair with the
    same scale and zero point is then dropped; a Shape reads the 8-bit tensor (same shape).
    Exact: these ops copy elements, and a per-tensor DQ maps each element alone. Returns the
    number of DQ -> Q pairs dropped.
    """
    from onnx import helper

    graph = model.graph
    outputs = {o.name for o in graph.output}
    changed = True
    while changed:
        changed = False
        consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        for dq in graph.node:
            if dq.op_type != "DequantizeLinear" or dq.output[0] in outputs or _params(model, dq) is None:
                continue
            users = consumers.get(dq.output[0], [])
            movers = [u for u in users if u.op_type in _MOVERS and u.input[0] == dq.output[0]]
            shapes = [u for u in users if u.op_type == "Shape"]
            if not movers or len(movers) + len(shapes) != len(users):
                continue
            for user in shapes:
                user.input[0] = dq.input[0]
            for user in movers:
                user.input[0] = dq.input[0]
                moved = user.output[0] + "_int8"
                new = helper.make_node(
                    "DequantizeLinear", [moved, *dq.input[1:]], [user.output[0]], name=user.name + "_dq"
                )
                user.output[0] = moved
                index = list(graph.node).index(user)
                graph.node.insert(index + 1, new)
            graph.node.remove(dq)
            changed = True
            break
    return _drop_identity_pairs(model)


def _drop_identity_pairs(model) -> int:
    """Remove DQ -> Q pairs whose scale and zero point are equal (Q(DQ(q)) == q); returns the count."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dropped = 0
    for q in list(graph.node):
        dq = producer.get(q.input[0])
        if q.op_type != "QuantizeLinear" or dq is None or dq.op_type != "DequantizeLinear":
            continue
        if q.output[0] in {o.name for o in graph.output}:
            continue
        if _params(model, q) is None or _params(model, q) != _params(model, dq):
            continue
        for node in consumers.get(q.output[0], []):
            node.input[:] = [dq.input[0] if n == q.output[0] else n for n in node.input]
        graph.node.remove(q)
        if len(consumers.get(dq.output[0], [])) == 1:
            graph.node.remove(dq)
        dropped += 1
    return dropped


def quantize(
    fp32_model,
    calibration: np.ndarray,
    method: str = DEFAULT_CALIBRATION,
    *,
    float_image_layers: bool = True,
    target: str = DEFAULT_TARGET,
):  # -> onnx.ModelProto
    """Calibrate on ``calibration`` (normalized float32 NHWC) and return the Q/DQ INT8 graph.

    ``float_image_layers`` keeps the layers that read the image in float (module docstring).
    ``target`` lays the graph out for TensorRT (symmetric INT8, the default) or for ONNX
    Runtime's CPU kernels (uint8 activations, Relu folded, 8-bit through MaxPool/Concat/Tile).
    """
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
    if target not in TARGETS:
        msg = f"unknown INT8 target {target!r}; allowed: {', '.join(TARGETS)}"
        raise ValueError(msg)
    ort_target = target == "onnxruntime"
    input_name = fp32_model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="lineside-int8-") as tmp:
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        # a file, not the ModelProto: given a proto, quant_pre_process loses small initializers
        onnx.save(fp32_model, str(src))
        # graph cleanup + shape inference, as onnxruntime recommends before quantizing; its symbolic
        # pass needs sympy, which the base install lacks and ONNX's own inference makes unneeded here
        has_sympy = importlib.util.find_spec("sympy") is not None
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=not has_sympy)
        keep_float: list[str] = []
        if float_image_layers:
            prepared = onnx.load(str(pre))
            if _name_nodes(prepared):
                onnx.save(prepared, str(pre))
            keep_float = image_layers(prepared)
            log.info("INT8: %s kept in float (they read the image)", ", ".join(keep_float) or "no layer")
        quantize_static(
            str(pre),
            str(out),
            _reader(calibration, input_name),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ORT_QUANTIZED_OPS if ort_target else QUANTIZED_OPS),
            per_channel=True,
            # 7-bit weights: no int16 saturation in ONNX Runtime's non-VNNI x86 kernels (module docstring)
            reduce_range=True,
            activation_type=QuantType.QUInt8 if ort_target else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=keep_float,
            # TensorRT's Q/DQ layers take INT8 (not the INT32 a quantized bias needs): biases stay float
            # onnxruntime target: asymmetric uint8 activations, so a Relu's output gets zero point 0
            # and onnxruntime drops the Relu (the Q clamps at 0) and fuses DQ->Conv->Q to QLinearConv
            extra_options={
                "ActivationSymmetric": not ort_target,
                "WeightSymmetric": True,
                "QuantizeBias": False,
            },
        )
        model = onnx.load(str(out))
    if ort_target:
        log.info("INT8: %d DQ->Q pairs dropped around element moves", sink_dequantize(model))
    return model


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
    target: str = DEFAULT_TARGET,
):  # -> tuple[onnx.ModelProto, GateReport]
    """Quantize for ``target``, then gate against FP32 on ``images``; raise GateError if it fails."""
    log.info("INT8: calibrating on %d images (%s, for %s)", len(calibration), method, target)
    int8 = quantize(fp32_model, calibration, method, target=target)
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
