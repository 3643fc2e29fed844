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


def bright_graph(size: int, in_name: str = "image", out_name: str = "probability"):
    """The ONNX model of the rule above for ``size``x``size`` single-channel NHWC images."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.full((1, 1, 3, 3), GAIN / 9.0, np.float32)  # GAIN * the 3x3 mean
    bias = np.array([-GAIN * BRIGHT], np.float32)
    nodes = [
        # NHWC -> NCHW for Conv, and back: the graph keeps the exported model's layout
        helper.make_node("Transpose", [in_name], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], ["logit"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["logit"], ["prob_nchw"]),
        helper.make_node("Transpose", ["prob_nchw"], [out_name], perm=[0, 2, 3, 1]),
    ]
    shape = ["batch", size, size, 1]
    graph = helper.make_graph(
        nodes,
        "lineside-bright",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what every ONNX Runtime this project supports reads
    onnx.checker.check_model(model, full_check=True)
    return model


def write_bright_package(
    out: str | Path,
    *,
    size: int,
    model_id: str = "test-bright",
    threshold: float = 0.5,
    min_defect_area: int = 16,
) -> Path:
    """Write the package described above to ``out`` (created) and return ``out``; it is opened
    and its graph checked against its manifest exactly as `lineside run` does before returning."""
    import onnx

    from converter.manifest import InputSpec, ModelManifest, OutputSpec
    from converter.package import ModelPackage, sha256_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    graph = out / "model.onnx"
    onnx.save(bright_graph(size), str(graph))
    manifest = ModelManifest(
        model_id=model_id,
        architecture="bright-3x3",
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
