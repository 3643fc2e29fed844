"""Untrained model packages built with ``onnx.helper``: the line-side tests' model, made in
milliseconds and without TensorFlow.

``write_bright_package`` writes what `lineside export` writes for the session's TinyUNet
(``manifest.json`` of the current schema, ``model.onnx`` with its sha256, input ``image``
``[batch, size, size, 1]`` float32 NHWC in ``zero_one``, output ``probability`` of the same
shape after a sigmoid), around a graph with a fixed rule instead of learnt weights:

    probability = sigmoid(GAIN * (mean3x3(x) - BRIGHT))

so a pixel whose 3x3 neighbourhood is brighter than BRIGHT (of full scale) is defective. The
decisions are then deterministic and known in advance: an all-white frame is FAIL, an
all-black one PASS, and the synthetic cameras (surface brightness 95..150 of 255) give a mix
of both. It decides by brightness, not by defects: tests that check decisions against the
synthetic truth use the trained ``trained_package`` (tests/conftest.py) instead.

``heavy=N`` adds a dead branch that costs what a real model costs: N 3x3 convolutions of
HEAVY_CHANNELS channels at full resolution on the input, whose one-channel result is multiplied
by a zero initializer and added to the rule's logit. ONNX Runtime folds only constant subgraphs
and has no x*0 rewrite (it folds the zero into the last 1x1 conv's weights, a conv it still
runs), so it computes the branch at every level, ORT_ENABLE_ALL included; and as the branch is
finite for finite input (the line's ``zero_one`` frames), it adds exactly 0: the outputs, and
so the decisions, are the rule's bit for bit (tests/edge/test_line_package.py checks both).
SLOW_HEAVY makes it as slow as the session's TinyUNet at MODEL_SIZE (``slow_line_package``):
the fault and reliability tests need a model slow enough to build a backlog and keep batches
busy, which the rule alone (0.2 ms a frame) is not.

scripts/gpu_acceptance.py's ``near_free_package`` builds a similar graph (sigmoid(x - 10)) around
a copy of an existing package's manifest; this one needs no package to start from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: the rule's brightness threshold, as a fraction of full scale (0.55 * 255 = 140 gray levels)
BRIGHT = 0.55
#: slope of the sigmoid: 0.05 of full scale (13 gray levels) from BRIGHT gives 0.73 / 0.27
GAIN = 20.0
#: the opset of the graph (the project's export writes 17)
OPSET = 17
#: channels of the dead branch's convolutions (``heavy``)
HEAVY_CHANNELS = 16
#: the ``heavy`` whose ONNX Runtime time matches the trained TinyUNet's at 128x128 (median ms at
#: batch 1 / 8, one thread, interleaved, on 2 busy cores: TinyUNet 8.4-9.1 / 74, heavy=8
#: 7.5-7.6 / 62-70, the rule alone 0.2 / 1.4; two threads bought neither of them anything there)
SLOW_HEAVY = 8


def bright_graph(size: int, in_name: str = "image", out_name: str = "probability", heavy: int = 0):
    """The ONNX model of the rule above for ``size``x``size`` single-channel NHWC images, with
    ``heavy`` convolutions of dead weight (see above) when it is not 0."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.full((1, 1, 3, 3), GAIN / 9.0, np.float32)  # GAIN * the 3x3 mean
    bias = np.array([-GAIN * BRIGHT], np.float32)
    initializers = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")]
    rule = "rule_logit" if heavy else "logit"
    nodes = [
        # NHWC -> NCHW for Conv, and back: the graph keeps the exported model's layout
        helper.make_node("Transpose", [in_name], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], [rule], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    if heavy:
        branch_nodes, branch_weights = dead_branch("nchw", rule, "logit", heavy)
        nodes += branch_nodes
        initializers += branch_weights
    nodes += [
        helper.make_node("Sigmoid", ["logit"], ["prob_nchw"]),
        helper.make_node("Transpose", ["prob_nchw"], [out_name], perm=[0, 2, 3, 1]),
    ]
    shape = ["batch", size, size, 1]
    graph = helper.make_graph(
        nodes,
        "lineside-bright" if not heavy else f"lineside-bright-heavy{heavy}",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, shape)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what every ONNX Runtime this project supports reads
    onnx.checker.check_model(model, full_check=True)
    return model


def dead_branch(source: str, logit: str, out: str, heavy: int) -> tuple[list, list]:
    """The nodes of ``out = logit + 0 * branch(source)``: ``heavy`` 3x3 Conv+Relu layers of
    HEAVY_CHANNELS channels (He-scaled fixed random weights, so activations stay of order 1) and
    a 1x1 Conv to one channel; returns the nodes and their initializers."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(17)
    nodes, initializers, prev, cin = [], [], source, 1
    for i in range(heavy):
        w = rng.standard_normal((HEAVY_CHANNELS, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))
        initializers += [
            numpy_helper.from_array(w.astype(np.float32), f"heavy_w{i}"),
            numpy_helper.from_array(np.zeros(HEAVY_CHANNELS, np.float32), f"heavy_b{i}"),
        ]
        nodes += [
            helper.make_node(
                "Conv",
                [prev, f"heavy_w{i}", f"heavy_b{i}"],
                [f"heavy_c{i}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
            ),
            helper.make_node("Relu", [f"heavy_c{i}"], [f"heavy_r{i}"]),
        ]
        prev, cin = f"heavy_r{i}", HEAVY_CHANNELS
    initializers += [
        numpy_helper.from_array(np.full((1, cin, 1, 1), 1.0 / cin, np.float32), "heavy_out_w"),
        # an initializer, not a Constant node: the zero is a weight, not foldable structure
        numpy_helper.from_array(np.zeros((), np.float32), "heavy_zero"),
    ]
    nodes += [
        helper.make_node("Conv", [prev, "heavy_out_w"], ["heavy_out"]),
        helper.make_node("Mul", ["heavy_out", "heavy_zero"], ["heavy_nil"]),
        helper.make_node("Add", [logit, "heavy_nil"], [out]),
    ]
    return nodes, initializers


def write_bright_package(
    out: str | Path,
    *,
    size: int,
    model_id: str = "test-bright",
    threshold: float = 0.5,
    min_defect_area: int = 16,
    heavy: int = 0,
) -> Path:
    """Write the package described above to ``out`` (created) and return ``out``; it is opened
    and its graph checked against its manifest exactly as `lineside run` does before returning.
    ``heavy``: the dead branch's convolutions (SLOW_HEAVY: as slow as the trained TinyUNet)."""
    import onnx

    from converter.manifest import InputSpec, ModelManifest, OutputSpec
    from converter.package import ModelPackage, sha256_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    graph = out / "model.onnx"
    onnx.save(bright_graph(size, heavy=heavy), str(graph))
    manifest = ModelManifest(
        model_id=model_id,
        architecture="bright-3x3" if not heavy else f"bright-3x3+dead-conv{heavy}x{HEAVY_CHANNELS}",
        input=InputSpec(name="image", height=size, width=size, channels=1, layout="NHWC"),
        output=OutputSpec(name="probability", activation="sigmoid", channels=1),
        normalization="zero_one",
        threshold=threshold,
        min_defect_area=min_defect_area,
        dataset={"note": f"untrained: pixels brighter than {BRIGHT:g} of full scale are defective"},
        files={"fp32": "model.onnx"},
        files_sha256={"model.onnx": sha256_file(graph)},
    )
    # validated as a reader will, so a bad argument fails here and not inside a worker
    ModelManifest.from_dict(manifest.to_dict(), source=f"{out} manifest").save(out)
    ModelPackage.open(out).check_graph_io("fp32")
    return out
