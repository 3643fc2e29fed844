"""The folded variant ``model.uint8.onnx``: uint8 frame in, uint8 mask out.

Preprocessing (``uint8 * scale + offset`` from converter.preprocessing) and the
threshold move into the graph, so a GPU receives the camera's bytes (a quarter of the
float32 copy) and returns a 0/1 mask. The variant is accepted only if its mask equals
the plain graph's thresholded output on the validation images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from converter import onnx_graph
from converter.errors import LinesideError
from converter.preprocessing import check_normalization, normalize

log = logging.getLogger(__name__)

FRAME_NAME = "frame"
MASK_NAME = "mask"


class FoldError(LinesideError, RuntimeError):
    """The folded graph does not give the same mask as the plain one."""


def fold(model, normalization: str, threshold: float):  # -> onnx.ModelProto
    """Wrap ``model`` (float NHWC in, probability out) with Cast/Mul/Add before and Greater/Cast after."""
    import onnx
    from onnx import TensorProto, helper

    scale, offset = check_normalization(normalization)
    graph = model.graph
    input_name, output_name = graph.input[0].name, graph.output[0].name
    dims = graph.input[0].type.tensor_type.shape.dim
    out_dims = graph.output[0].type.tensor_type.shape.dim
    prefix = "lineside_fold"
    pre = [
        helper.make_node(
            "Cast", [FRAME_NAME], [f"{prefix}/float"], to=TensorProto.FLOAT, name=f"{prefix}/cast_in"
        ),
        # the same two float32 operations as normalize(): multiply, then add the offset
        helper.make_node(
            "Mul", [f"{prefix}/float", f"{prefix}/scale"], [f"{prefix}/scaled"], name=f"{prefix}/mul"
        ),
        helper.make_node("Add", [f"{prefix}/scaled", f"{prefix}/offset"], [input_name], name=f"{prefix}/add"),
    ]
    post = [
        helper.make_node(
            "Greater", [output_name, f"{prefix}/threshold"], [f"{prefix}/above"], name=f"{prefix}/greater"
        ),
        helper.make_node(
            "Cast", [f"{prefix}/above"], [MASK_NAME], to=TensorProto.UINT8, name=f"{prefix}/cast_out"
        ),
    ]
    constants = [
        helper.make_tensor(f"{prefix}/scale", TensorProto.FLOAT, [], [np.float32(scale)]),
        helper.make_tensor(f"{prefix}/offset", TensorProto.FLOAT, [], [np.float32(offset)]),
        helper.make_tensor(f"{prefix}/threshold", TensorProto.FLOAT, [], [np.float32(threshold)]),
    ]
    frame = helper.make_tensor_value_info(
        FRAME_NAME, TensorProto.UINT8, [d.dim_param or d.dim_value for d in dims]
    )
    mask = helper.make_tensor_value_info(
        MASK_NAME, TensorProto.UINT8, [d.dim_param or d.dim_value for d in out_dims]
    )
    folded = helper.make_graph(
        pre + list(graph.node) + post,
        f"{graph.name}_uint8",
        [frame],
        [mask],
        initializer=list(graph.initializer) + constants,
        value_info=list(graph.value_info),
    )
    result = helper.make_model(folded, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    result.doc_string = (
        f"{model.doc_string} (uint8 in: {normalization}; uint8 out: probability > {threshold})"
    )
    onnx.checker.check_model(result)
    return result


@dataclass
class FoldReport:
    """Folded vs plain graph on the same frames."""

    images: int
    mismatched_pixels: int
    #: mismatches on pixels whose probability is within 1e-6 of the threshold (rounding, not a bug)
    borderline_pixels: int
    passed: bool

    def to_dict(self) -> dict[str, object]:
        return dict(vars(self))


def check_fold(
    plain_model, folded_model, frames: np.ndarray, normalization: str, threshold: float
) -> FoldReport:
    """Folded mask must equal ``plain(normalize(frames)) > threshold`` pixel for pixel."""
    plain = onnx_graph.run_batches(
        onnx_graph.session(plain_model.SerializeToString()), normalize(frames, normalization)
    )
    folded = onnx_graph.run_batches(onnx_graph.session(folded_model.SerializeToString()), frames)
    expected = (plain > threshold).astype(np.uint8)
    if folded.shape != expected.shape or folded.dtype != np.uint8:
        msg = f"folded graph returns {folded.dtype} {folded.shape}, expected uint8 {expected.shape}"
        raise FoldError(msg)
    wrong = folded != expected
    borderline = wrong & (np.abs(plain - threshold) < 1e-6)
    report = FoldReport(
        images=len(frames),
        mismatched_pixels=int(wrong.sum()),
        borderline_pixels=int(borderline.sum()),
        passed=int(wrong.sum()) == int(borderline.sum()),
    )
    if not report.passed:
        msg = (
            f"the folded uint8 graph differs from the plain graph on {report.mismatched_pixels} pixels of "
            f"{len(frames)} frames; export without --fold and report this"
        )
        raise FoldError(msg)
    log.info(
        "folded graph equals the plain graph on %d frames (%d borderline pixels)",
        len(frames),
        report.borderline_pixels,
    )
    return report
