"""The instance norm (``model.instance_norm``) as ONNX's own ``InstanceNormalization`` op.

Keras' ``GroupNormalization(groups=-1)`` reaches ONNX through tf2onnx as arithmetic: a
Reshape to five axes, a mean, a variance, a square root, a reciprocal and five Muls and Adds,
for every conv. ONNX Runtime runs each as a pass over the feature map, and the five-axis
Reshape stops tf2onnx's transpose optimizer, so every conv also keeps a Transpose on each
side. ``InstanceNormalization`` is one fused kernel in ONNX Runtime and a normalization layer
in TensorRT's ONNX parser, and it leaves nothing for the transposes to stop at.

:func:`fuse_instance_norms` finds the pattern by its structure, not by layer names, and
replaces it (a scale of ones or an offset of zeros, which tf2onnx folds away, included); a
pattern that differs in any step (a group of several channels, another tf2onnx) is left as it
was, still correct, and the export's parity gate checks the result either way.
"""

from __future__ import annotations

import numpy as np

from converter.onnx_graph import attributes

#: tf2onnx's five-axis view of an NHWC map for GroupNormalization: (N, H, W, groups, 1);
#: the statistics run over H, W and the group's one channel
GROUP_AXES = {1, 2, 4}


class _Graph:
    """Producer and consumer lookups over an ONNX graph, for matching one pattern."""

    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in dict.fromkeys(node.input):  # a Mul of a tensor with itself reads it once
                self.consumers.setdefault(name, []).append(node)
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def only(self, tensor: str, op_type: str):
        """The one consumer of ``tensor`` if it is an ``op_type`` and nothing else reads it."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != op_type or tensor in self.outputs:
            return None
        return users[0]

    def of_type(self, tensor: str, op_type: str) -> list:
        return [n for n in self.consumers.get(tensor, []) if n.op_type == op_type]

    def reading(self, tensor: str, op_type: str, *inputs: str, ordered: bool = False):
        """The consumer of ``tensor`` of ``op_type`` whose inputs are ``inputs`` (in that order
        if ``ordered``), or None."""
        for node in self.of_type(tensor, op_type):
            if (list(node.input) == list(inputs)) if ordered else (sorted(node.input) == sorted(inputs)):
                return node
        return None

    def other_input(self, node, known: str) -> str | None:
        """The input of a two-input node that is not ``known`` (None if both or neither are)."""
        rest = [name for name in node.input if name != known]
        return rest[0] if len(rest) == 1 and len(node.input) == 2 else None


def _mean_over_group(g: _Graph, tensor: str):
    """Follow the ReduceMean (or the chain of single-axis ReduceMeans) that averages
    ``tensor`` over :data:`GROUP_AXES` with keepdims; returns (nodes, output) or None."""
    nodes, axes = [], set()
    while not axes >= GROUP_AXES:
        node = g.only(tensor, "ReduceMean") if nodes else next(iter(g.of_type(tensor, "ReduceMean")), None)
        if node is None or len(node.input) != 1:
            return None
        attrs = attributes(node)
        axes |= set(attrs.get("axes", []))
        if attrs.get("keepdims", 1) != 1:
            return None
        nodes.append(node)
        tensor = node.output[0]
    return (nodes, tensor) if axes == GROUP_AXES else None


def _optional_step(g: _Graph, tensor: str, op_type: str, default: np.ndarray):
    """(node, its output, its constant) where ``tensor`` goes on through an ``op_type`` with one
    constant per channel (the scale's Mul, the offset's Add); (None, tensor, ``default``)
    where there is no such step."""
    node = g.only(tensor, op_type)
    value = g.constants.get(g.other_input(node, tensor) or "") if node is not None else None
    if value is None or value.size != default.size:
        return None, tensor, default
    return node, node.output[0], value.reshape(-1)


def _match(g: _Graph, reshape):
    """The instance norm that starts at ``reshape`` (its five-axis view), as
    (matched nodes, its output Reshape, gamma, beta, epsilon), or None."""
    shape = g.constants.get(reshape.input[1]) if len(reshape.input) == 2 else None
    if shape is None or shape.shape != (5,) or shape[-1] != 1:
        return None
    view = reshape.output[0]
    mean = _mean_over_group(g, view)
    if mean is None:
        return None
    mean_nodes, mean_out = mean
    sub = g.reading(mean_out, "Sub", view, mean_out, ordered=True)
    neg = g.reading(mean_out, "Neg", mean_out)
    if sub is None or neg is None or len(g.consumers[mean_out]) != 2:
        return None
    square = g.only(sub.output[0], "Mul")
    if square is None or set(square.input) != {sub.output[0]}:
        return None
    var = _mean_over_group(g, square.output[0])
    if var is None:
        return None
    var_nodes, var_out = var
    add_eps = g.only(var_out, "Add")
    eps = g.constants.get(g.other_input(add_eps, var_out) or "") if add_eps is not None else None
    sqrt = g.only(add_eps.output[0], "Sqrt") if eps is not None and eps.size == 1 else None
    recip = g.only(sqrt.output[0], "Reciprocal") if sqrt is not None else None
    channels = int(shape[3])
    if recip is None or channels < 1:
        return None
    # the scale and the offset, where there are any: tf2onnx folds away a scale of ones and an
    # offset of zeros (an untrained layer, or one made without them)
    scale, s, gamma = _optional_step(g, recip.output[0], "Mul", np.ones(channels, np.float32))
    # y = view * s + (beta - mean * s), s = gamma / sqrt(var + eps)
    shift, scaled = g.reading(s, "Mul", neg.output[0], s), g.reading(s, "Mul", view, s)
    if len(g.consumers[s]) != 2 or shift is None or scaled is None or len(g.consumers[view]) != 3:
        return None
    add_beta, c, beta = _optional_step(g, shift.output[0], "Add", np.zeros(channels, np.float32))
    total = g.only(c, "Add")
    if total is None or total is not g.reading(scaled.output[0], "Add", scaled.output[0], c):
        return None
    back = g.only(total.output[0], "Reshape")
    if back is None:
        return None
    matched = [reshape, *mean_nodes, sub, neg, square, *var_nodes, add_eps, sqrt, recip, scale]
    matched = [n for n in [*matched, shift, scaled, add_beta, total, back] if n is not None]
    return matched, back, gamma, beta, float(eps.reshape(()))


def _drop_unused(graph) -> None:
    """Remove the nodes and initializers that no graph output depends on any more (the
    shape arithmetic that fed the replaced Reshapes)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    used = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


def fuse_instance_norms(model) -> int:
    """Replace each instance norm that tf2onnx wrote out as arithmetic on an NHWC map with
    Transpose -> InstanceNormalization -> Transpose (which :func:`cancel_transposes` then
    folds into the convs around it); returns how many were replaced."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    g = _Graph(graph)
    replaced: dict[int, list] = {}  # id of the output Reshape -> the nodes that take its place
    dropped: set[int] = set()
    for node in graph.node:
        found = _match(g, node) if node.op_type == "Reshape" else None
        if found is None:
            continue
        matched, back, gamma, beta, eps = found
        base = back.output[0].rsplit(":", 1)[0]
        source = node.input[0]
        scale_name, bias_name = f"{base}__in_scale", f"{base}__in_bias"
        graph.initializer.extend(
            [
                numpy_helper.from_array(gamma.astype(np.float32), scale_name),
                numpy_helper.from_array(beta.astype(np.float32), bias_name),
            ]
        )
        nchw, normed = f"{base}__nchw", f"{base}__in"
        make = onnx.helper.make_node
        replaced[id(back)] = [
            make("Transpose", [source], [nchw], name=nchw, perm=[0, 3, 1, 2]),
            make("InstanceNormalization", [nchw, scale_name, bias_name], [normed], name=normed, epsilon=eps),
            make("Transpose", [normed], [back.output[0]], name=f"{base}__nhwc", perm=[0, 2, 3, 1]),
        ]
        dropped.update(id(n) for n in matched)
    if not replaced:
        return 0
    nodes = []
    for node in graph.node:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])  # where the old output was made: its input exists by then
        elif id(node) not in dropped:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph)
    return len(replaced)


def cancel_transposes(model):  # -> onnx.ModelProto
    """``model`` after tf2onnx's own optimizers, whose transpose optimizer pushes the
    Transposes that :func:`fuse_instance_norms` leaves through Relu, MaxPool and Concat and
    cancels them against the convs' own."""
    from tf2onnx.graph import GraphUtil

    return GraphUtil.optimize_model_proto(model, catch_errors=False)
