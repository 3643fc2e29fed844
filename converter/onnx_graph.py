"""Small, checked edits and facts about ONNX graphs shared by the converter steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converter.errors import LinesideError

#: TensorRT 10/11 parse opset 17+ well (LayerNormalization etc. as one op)
MIN_OPSET = 17


class GraphError(LinesideError, ValueError):
    """An ONNX graph does not have the shape the model package promises."""


def load(path: str | Path, external_data: bool = True):  # -> onnx.ModelProto
    """Load and check an ONNX graph (onnx imported here: ``converter`` stays importable without it).

    ``external_data=False`` leaves weights stored beside the graph on disk: enough to read its I/O.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        msg = f"{path}: ONNX graph not found; re-create the package with `lineside export`"
        raise GraphError(msg)
    try:
        model = onnx.load(str(path), load_external_data=external_data)
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


def _axes(layout: str, height: int, width: int, channels: int) -> dict[str, int]:
    """The manifest's sizes by axis position after the batch axis, in ``layout``."""
    order = ("height", "width", "channels") if layout == "NHWC" else ("channels", "height", "width")
    sizes = {"height": height, "width": width, "channels": channels}
    return {name: sizes[name] for name in order}


def _shape_problems(where: str, shape: list, axes: dict[str, int], layout: str, strict: bool) -> list[str]:
    """Disagreements between a graph tensor's shape and the manifest's; ``strict`` refuses
    dynamic H/W/C (an input must have them fixed, an output may leave them to inference)."""
    expected = ["batch", *axes.values()]
    if len(shape) != 4:
        return [f"{where} shape: graph {shape}, manifest {expected} ({layout})"]
    if isinstance(shape[0], int):
        return [f"{where} batch: graph fixed {shape[0]}, manifest dynamic (the line sends 1..max_batch)"]
    other = "NCHW" if layout == "NHWC" else "NHWC"
    swapped = ["batch", *_axes(other, axes["height"], axes["width"], axes["channels"]).values()]
    if shape[1:] != expected[1:] and shape[1:] == swapped[1:]:
        return [f"{where} layout: graph {shape} is {other}, manifest {layout}"]
    problems = []
    for (axis, want), got in zip(axes.items(), shape[1:], strict=True):
        if isinstance(got, int) and got != want:
            problems.append(f"{where} {axis}: graph {got}, manifest {want}")
        elif not isinstance(got, int) and strict:
            problems.append(f"{where} {axis}: graph dynamic ({got!r}), manifest {want}")
    return problems


def check_io(path: str | Path, manifest) -> None:
    """Refuse a graph whose input or output disagrees with ``manifest`` (a ModelManifest): the
    names, the shape (H, W, channels; a dynamic batch), the layout and the dtype, all named in
    one line with both values. Reads only the graph's protobuf, not external weights."""
    path = Path(path)
    summary = io_summary(load(path, external_data=False))
    if len(summary["inputs"]) != 1 or len(summary["outputs"]) != 1:
        msg = (
            f"{path}: the graph has {len(summary['inputs'])} input(s) and {len(summary['outputs'])} "
            f"output(s), the manifest describes one of each; re-run `lineside export`"
        )
        raise GraphError(msg)
    inp, out = summary["inputs"][0], summary["outputs"][0]
    spec_in, spec_out = manifest.input, manifest.output
    layout = spec_in.layout
    problems = []
    if inp["name"] != spec_in.name:
        problems.append(f"input name: graph {inp['name']!r}, manifest {spec_in.name!r}")
    if inp["dtype"] != spec_in.dtype:
        problems.append(f"input dtype: graph {inp['dtype']}, manifest {spec_in.dtype}")
    axes = _axes(layout, spec_in.height, spec_in.width, spec_in.channels)
    problems += _shape_problems("input", inp["shape"], axes, layout, strict=True)
    if out["name"] != spec_out.name:
        problems.append(f"output name: graph {out['name']!r}, manifest {spec_out.name!r}")
    if out["dtype"] != "float32":
        problems.append(f"output dtype: graph {out['dtype']}, manifest float32 probabilities")
    axes = _axes(layout, spec_in.height, spec_in.width, spec_out.channels)
    problems += _shape_problems("output", out["shape"], axes, layout, strict=False)
    if problems:
        msg = (
            f"{path} does not match manifest.json: {'; '.join(problems)}; the graph and the manifest "
            "must come from one export: re-run `lineside export`"
        )
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


def attributes(node) -> dict:
    """A node's attributes by name, as Python values."""
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def split_wide_means(model) -> int:
    """Rewrite each ReduceMean over several axes as a chain of ReduceMeans over one axis each;
    returns how many were rewritten.

    Why: ONNX Runtime's CPU kernel sums a mean over all the axes it is given in float32, in one
    long run: over a 512x512 image (``model.standardize``) the mean came out 5e-5 off (1e-4 of
    its value; numpy's pairwise float32 sum is off by 4e-8). The standardized input moves by
    5e-4 with it, and a BatchNorm TinyUNet trained on real surfaces turned that into 0.002-0.02
    of probability, so its export failed the parity gate on its own training images. A mean of
    means over equal groups is the same mean, and one axis at a time sums at most a side's
    length of values per step. Only the ``axes`` attribute of opset 17 is read, and only
    non-negative axes, so the rank is not needed; other nodes are left as they are.
    """
    import onnx

    graph = model.graph
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = attributes(node)
        axes = list(attrs.get("axes", []))
        if node.op_type != "ReduceMean" or len(axes) < 2 or min(axes) < 0 or len(node.input) != 1:
            nodes.append(node)
            continue
        keepdims = attrs.get("keepdims", 1)
        # innermost first; without keepdims, dropping a higher axis first leaves the lower ones' numbers
        order = sorted(axes, reverse=True)
        source = node.input[0]
        for i, axis in enumerate(order):
            last = i == len(order) - 1
            out = node.output[0] if last else f"{node.output[0]}__mean_axis{axis}"
            nodes.append(
                onnx.helper.make_node(
                    "ReduceMean",
                    [source],
                    [out],
                    name=f"{node.name or node.output[0]}__axis{axis}",
                    axes=[axis],
                    keepdims=keepdims,
                )
            )
            source = out
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten
