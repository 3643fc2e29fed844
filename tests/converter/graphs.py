"""Small real ONNX graphs built with ``onnx.helper``, for the package checks.

The graph is one Cast of the input to float32: enough for onnx to read its inputs and
outputs, and for ONNX Runtime to run it when its output has the input's shape.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

DTYPES = {"float32": TensorProto.FLOAT, "uint8": TensorProto.UINT8}


def write_graph(
    path: Path,
    *,
    in_shape: list = ("batch", 128, 128, 1),
    out_shape: list | None = None,
    in_name: str = "image",
    out_name: str = "probability",
    in_dtype: str = "float32",
    out_dtype: str = "float32",
    inputs: int = 1,
) -> Path:
    """Write a graph with the given I/O to ``path`` (``out_shape`` defaults to ``in_shape``)."""
    values = [helper.make_tensor_value_info(in_name, DTYPES[in_dtype], list(in_shape))]
    for i in range(1, inputs):
        values.append(helper.make_tensor_value_info(f"extra{i}", TensorProto.FLOAT, list(in_shape)))
    out = helper.make_tensor_value_info(out_name, DTYPES[out_dtype], list(out_shape or in_shape))
    node = helper.make_node("Cast", [in_name], [out_name], to=DTYPES[out_dtype])
    model = helper.make_model(
        helper.make_graph([node], "lineside-test", values, [out]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8  # what every ONNX Runtime this project supports reads
    onnx.save(model, str(path))
    return path
