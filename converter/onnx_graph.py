"""Small, checked edits and facts about ONNX graphs shared by the converter steps."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from converter.errors import LinesideError

log = logging.getLogger(__name__)

#: TensorRT 10/11 parse opset 17+ well (LayerNormalization etc. as one op)
MIN_OPSET = 17


class GraphError(LinesideError, ValueError):
    """An ONNX graph does not have the shape the model package promises."""


def load(path: str | Path):  # -> onnx.ModelProto
    """Load and check an ONNX graph (onnx imported here: ``converter`` stays importable without it)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        msg = f"{path}: ONNX graph not found; re-create the package with `lineside export`"
        raise GraphError(msg)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        msg = f"{path}: not a readable ONNX file ({exc}); re-create it with `lineside export`"
        raise GraphError(msg) from None
    return model


def opset(model) -> int:
    """The default-domain opset of ``model``."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def rename_tensor(model, old: str, new: str) -> None:
    """Rename a tensor everywhere it appears, so inputs/outputs get stable, readable names."""
    if old == new:
        return
    graph = model.graph
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new


def io_summary(model) -> dict[str, list[dict[str, object]]]:
    """Names, element types and shapes (dim_param for dynamic axes) of the graph's inputs/outputs."""
    import onnx

    def describe(values) -> list[dict[str, object]]:
        rows = []
        initializers = {i.name for i in model.graph.initializer}
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            dims = [d.dim_param or d.dim_value or "?" for d in tensor.shape.dim]
            rows.append(
                {
                    "name": value.name,
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                    "shape": dims,
                }
            )
        return rows

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def check_package_graph(model, path: Path, height: int, width: int, channels: int) -> None:
    """Refuse a graph without a dynamic batch, a fixed H/W/C, one input and one output, opset >= 17."""
    summary = io_summary(model)
    if len(summary["inputs"]) != 1 or len(summary["outputs"]) != 1:
        msg = f"{path}: expected one input and one output, got {summary}"
        raise GraphError(msg)
    shape = summary["inputs"][0]["shape"]
    if len(shape) != 4 or isinstance(shape[0], int) or shape[1:] != [height, width, channels]:
        msg = (
            f"{path}: input shape {shape} is not [batch, {height}, {width}, {channels}] with a dynamic batch"
        )
        raise GraphError(msg)
    if opset(model) < MIN_OPSET:
        msg = f"{path}: opset {opset(model)} is below {MIN_OPSET}; re-export with a newer tf2onnx"
        raise GraphError(msg)


def session(path_or_bytes, threads: int = 0):  # -> onnxruntime.InferenceSession
    """A CPU onnxruntime session for converter checks (quiet, one inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        where = path_or_bytes if isinstance(path_or_bytes, Path) else "in-memory graph"
        msg = f"{where}: onnxruntime cannot load it ({exc})"
        raise GraphError(msg) from None


def run_batches(sess, images: np.ndarray, batch: int = 8) -> np.ndarray:
    """Run ``sess`` on ``images`` (N, ...) in batches; returns the first output concatenated."""
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(outs, axis=0)
