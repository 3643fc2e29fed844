"""FP32 -> FP16 ONNX graph with onnxconverter-common, behind the FP16 gate.

The graph keeps FP32 inputs and outputs (``keep_io_types``) so every backend feeds it
the same float32 batch, and keeps the precision-sensitive operations in FP32: the
converter's default block list plus the ops below. When the gate fails because an
activation leaves the FP16 range (|x| > 65504), :func:`overflow_nodes` finds the nodes
that produce such values on the validation images; they are either kept in FP32 and
the graph re-gated (``auto_keep``), or named in the refusal.
"""

from __future__ import annotations

import logging

import numpy as np

from converter import onnx_graph
from converter.gate import FP16_BOUNDS, GateBounds, GateError, GateReport, run_gate

log = logging.getLogger(__name__)

#: largest finite float16
FP16_MAX = 65504.0
#: flag activations above this share of FP16_MAX: a value at 60 % of the range overflows
#: in the next Add or Conv accumulation on another image
OVERFLOW_MARGIN = 0.5
#: ops whose FP16 error grows with the input (exp/log/pow, reductions, normalizations) and
#: the final Sigmoid, whose output is compared with the threshold
PRECISION_SENSITIVE_OPS = (
    "Exp",
    "Log",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Div",
    "ReduceMean",
    "ReduceSum",
    "ReduceL2",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "InstanceNormalization",
    "Erf",
    "Sigmoid",
)


def block_list() -> list[str]:
    """Op types kept in FP32: onnxconverter-common's defaults plus ours."""
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(PRECISION_SENSITIVE_OPS))


def convert(model, keep_nodes: list[str] | tuple[str, ...] = ()):  # -> onnx.ModelProto
    """FP16 copy of ``model`` (an onnx.ModelProto), FP32 I/O, ``keep_nodes`` left in FP32."""
    import copy
    import warnings

    from onnxconverter_common.float16 import convert_float_to_float16

    with warnings.catch_warnings(record=True) as caught:
        # it warns once per weight it clamps into FP16 range; the gate judges the effect, one line is enough
        warnings.simplefilter("always")
        converted = convert_float_to_float16(
            copy.deepcopy(model),
            keep_io_types=True,
            op_block_list=block_list(),
            node_block_list=list(keep_nodes),
            disable_shape_infer=False,
        )
    clamped = [w for w in caught if "truncated" in str(w.message)]
    if clamped:
        log.info(
            "FP16: %d weight value(s) clamped into FP16 range, e.g. %s", len(clamped), clamped[0].message
        )
    return converted


def tensor_peaks(model, images: np.ndarray) -> dict[str, float]:
    """Max |value| of every float tensor (activations and weights) over ``images``, in FP32.

    Runs one image at a time: a 512x512 UNet holds hundreds of MB of activations per image.
    """
    import copy

    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(copy.deepcopy(model))
    float_tensors = {
        v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    existing = {o.name for o in inferred.graph.output}
    probe = copy.deepcopy(inferred)
    for node in probe.graph.node:
        for out in node.output:
            if out in float_tensors and out not in existing:
                probe.graph.output.append(
                    onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)
                )
    sess = onnx_graph.session(probe.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    peaks = dict.fromkeys(names, 0.0)
    input_name = sess.get_inputs()[0].name
    for i in range(len(images)):
        for name, value in zip(names, sess.run(names, {input_name: images[i : i + 1]}), strict=True):
            if value.size:
                peaks[name] = max(peaks[name], float(np.nanmax(np.abs(value))))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            array = numpy_helper.to_array(init)
            peaks[init.name] = float(np.max(np.abs(array))) if array.size else 0.0
    return peaks


def overflow_nodes(model, images: np.ndarray, margin: float = OVERFLOW_MARGIN) -> list[str]:
    """Nodes that read or write a tensor close to or beyond the FP16 range on ``images``.

    Consumers count as well as producers: a node kept in FP32 whose output is cast to
    FP16 for the next node would overflow there instead.
    """
    peaks = tensor_peaks(model, images)
    limit = FP16_MAX * margin
    hot_tensors = {name for name, peak in peaks.items() if peak > limit}
    hot = []
    for node in model.graph.node:
        touched = [t for t in (*node.input, *node.output) if t in hot_tensors]
        if touched:
            hot.append(node.name)
            log.info(
                "node %s touches %s up to |x| = %.3g (FP16 max %.0f)",
                node.name,
                touched[0],
                peaks[touched[0]],
                FP16_MAX,
            )
    return hot


def make_fp16(
    fp32_model,
    images: np.ndarray,
    *,
    threshold: float,
    min_defect_area: int,
    bounds: GateBounds = FP16_BOUNDS,
    auto_keep: bool = True,
    names: list[str] | None = None,
    source: str = "model.onnx",
):  # -> tuple[onnx.ModelProto, GateReport]
    """Convert to FP16 and gate it; keep overflowing nodes in FP32 when allowed, else refuse.

    Returns the FP16 graph and the passing gate report; raises GateError otherwise.
    """
    reference = onnx_graph.session(fp32_model.SerializeToString())
    fp16 = convert(fp32_model)
    report = _gate(reference, fp16, images, threshold, min_defect_area, bounds, names)
    if report.passed:
        return fp16, report
    hot = overflow_nodes(fp32_model, images)
    if not hot:
        msg = (
            f"{source}: the FP16 graph fails its gate ({'; '.join(report.reasons)}) and no activation leaves "
            "the FP16 range; ship FP32 or INT8 for this model, or retrain with normalization layers"
        )
        raise GateError(msg)
    if not auto_keep:
        msg = (
            f"{source}: the FP16 graph fails its gate ({'; '.join(report.reasons)}); these nodes overflow "
            f"FP16, keep them in FP32: {', '.join(hot)} (drop --no-auto-fp32 to do so automatically)"
        )
        raise GateError(msg)
    log.warning(
        "FP16 gate failed (%s); keeping %d node(s) in FP32: %s", "; ".join(report.reasons), len(hot), hot
    )
    fp16 = convert(fp32_model, keep_nodes=hot)
    report = _gate(reference, fp16, images, threshold, min_defect_area, bounds, names)
    report.kept_fp32 = hot
    if not report.passed:
        msg = (
            f"{source}: the FP16 graph fails its gate even with {', '.join(hot)} in FP32 "
            f"({'; '.join(report.reasons)}); ship the FP32 or INT8 graph"
        )
        raise GateError(msg)
    log.warning("FP16 gate passes with %d node(s) kept in FP32: %s", len(hot), ", ".join(hot))
    return fp16, report


def _gate(reference, fp16, images, threshold, min_defect_area, bounds, names) -> GateReport:
    candidate = onnx_graph.session(fp16.SerializeToString())
    return run_gate(
        reference,
        candidate,
        images,
        name="fp16",
        threshold=threshold,
        min_defect_area=min_defect_area,
        bounds=bounds,
        names=names,
    )
