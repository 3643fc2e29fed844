"""FP16 and INT8 graphs behind their gates, and the folded uint8 variant, on a trained model."""

from __future__ import annotations

import numpy as np
import pytest

from converter import onnx_graph
from converter.export import export_package
from converter.folded import FoldError, check_fold, fold
from converter.gate import FP16_BOUNDS, GateError, compare, is_fail
from converter.package import sha256_file
from converter.variants import add_variants
from tests.converter.conftest import SIZE, write_checkpoint


def assert_hashed(package, precision: str) -> None:
    """The variant's file is in the manifest with the sha256 it was written with."""
    name = package.manifest.files[precision]
    assert package.manifest.files_sha256[name] == sha256_file(package.root / name)
    assert package.verify() == []


def test_fp16_gate_passes_for_the_trained_model(package_copy, dataset):
    package = add_variants(package_copy, data_dir=dataset, precisions=("fp16",), gate_samples=24)
    gate = package.manifest.gates["fp16"]
    assert gate["passed"] and gate["nonfinite"] == 0
    assert gate["dice"] >= 0.99 and gate["agreement"] >= 0.995
    assert (
        gate["reference_defect_pixels"] > 0 and gate["reference_fail_images"] > 0
    )  # the Dice means something
    assert gate["kept_fp32"] == []
    assert_hashed(package, "fp16")
    model = onnx_graph.load(package.onnx_path("fp16"))
    assert any(init.data_type == 10 for init in model.graph.initializer)  # FLOAT16 weights
    io = onnx_graph.io_summary(model)
    assert io["inputs"][0]["dtype"] == "float32" and io["outputs"][0]["dtype"] == "float32"


def _overflowing_checkpoint(trained_checkpoint, folder):
    """The trained model with c1 scaled up and c2 scaled down: same FP32 answer, c1 overflows FP16."""
    import keras

    from converter.preprocessing import normalize
    from converter.samples import load_samples

    model = keras.models.load_model(trained_checkpoint / "model.keras", compile=False)
    probe = keras.Model(model.input, model.get_layer("c1").output)
    images = normalize(
        load_samples(trained_checkpoint_data(trained_checkpoint), SIZE, SIZE, 1, 8).images, "zero_one"
    )
    peak = float(np.max(probe.predict(images, verbose=0)))
    scale = 8 * 65504.0 / peak
    kernel, bias = model.get_layer("c1").get_weights()
    model.get_layer("c1").set_weights([kernel * scale, bias * scale])
    kernel2, bias2 = model.get_layer("c2").get_weights()
    model.get_layer("c2").set_weights([kernel2 / scale, bias2])  # relu(s*x)/s == relu(x)
    return write_checkpoint(model, folder, data_root=trained_checkpoint_data(trained_checkpoint))


def trained_checkpoint_data(checkpoint) -> str:
    import json

    return json.loads((checkpoint / "training.json").read_text())["dataset"]["root"]


@pytest.fixture(scope="module")
def overflow_package(trained_checkpoint, tmp_path_factory):
    folder = _overflowing_checkpoint(trained_checkpoint, tmp_path_factory.mktemp("overflow_ckpt"))
    return export_package(folder, tmp_path_factory.mktemp("overflow") / "pkg", samples=4)


def test_fp16_gate_catches_overflow(overflow_package, dataset):
    # the FP32 graph is fine: the scaling cancels out
    with pytest.raises(GateError) as info:
        add_variants(
            overflow_package, data_dir=dataset, precisions=("fp16",), gate_samples=8, fp16_auto_keep=False
        )
    message = str(info.value)
    assert "NaN/Inf" in message or "Dice" in message
    assert "keep them in FP32" in message and "c1" in message
    assert not (overflow_package.root / "model.fp16.onnx").exists()


def test_fp16_gate_keeps_overflowing_nodes_in_fp32(overflow_package, dataset, tmp_path):
    import shutil

    from converter.package import ModelPackage

    shutil.copytree(overflow_package.root, tmp_path / "p")
    package = add_variants(
        ModelPackage.open(tmp_path / "p"), data_dir=dataset, precisions=("fp16",), gate_samples=8
    )
    gate = package.manifest.gates["fp16"]
    assert gate["passed"] and gate["nonfinite"] == 0
    assert any("c1" in name for name in gate["kept_fp32"]) and any("c2" in name for name in gate["kept_fp32"])


def test_int8_graph_runs_and_passes_its_gate(package_copy, dataset):
    package = add_variants(
        package_copy, data_dir=dataset, precisions=("int8",), gate_samples=16, calibration_samples=16
    )
    gate = package.manifest.gates["int8"]
    assert gate["passed"] and gate["dice"] >= 0.95 and gate["agreement"] >= 0.98
    assert gate["calibration"]["images"] == 16
    assert_hashed(package, "int8")
    model = onnx_graph.load(package.onnx_path("int8"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # explicit Q/DQ, what TensorRT 11 takes
    zero_points = [i for i in model.graph.initializer if "zero_point" in i.name]
    assert zero_points and all(
        i.data_type == 3 for i in zero_points
    )  # INT8 only (TensorRT has no INT32 Q/DQ)
    assert all(not any(i.int32_data) and not any(i.raw_data) for i in zero_points)  # symmetric
    # placement (converter/int8.py): the Conv that reads the image stays float, every other one
    # reads a dequantized input and dequantized per-channel weights, which TensorRT fuses into INT8
    producer = {out: node for node in model.graph.node for out in node.output}

    def dequantized(tensor: str) -> bool:
        return tensor in producer and producer[tensor].op_type == "DequantizeLinear"

    first, *others = [n for n in model.graph.node if n.op_type == "Conv"]
    assert not dequantized(first.input[0]) and not dequantized(first.input[1])
    assert others and all(dequantized(c.input[0]) and dequantized(c.input[1]) for c in others)
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    for conv in others:  # per channel: one scale for each output channel
        weight, scale = producer[conv.input[1]].input[:2]
        assert shapes[scale] == shapes[weight][:1]
    x = np.random.default_rng(0).random((3, SIZE, SIZE, 1), dtype=np.float32)
    out = onnx_graph.session(package.onnx_path("int8")).run(None, {"image": x})[0]
    assert out.shape == (3, SIZE, SIZE, 1) and np.isfinite(out).all()


def test_folded_uint8_graph_equals_the_plain_graph(package_copy, dataset):
    package = add_variants(package_copy, data_dir=dataset, precisions=(), folded=True, gate_samples=8)
    assert package.manifest.gates["uint8"]["passed"]
    assert_hashed(package, "uint8")
    sess = onnx_graph.session(package.root / package.manifest.files["uint8"])
    frames = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 1), dtype=np.uint8)
    mask = sess.run(None, {"frame": frames})[0]
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}


def test_fold_check_catches_a_wrong_fold(fp32_package):
    plain = onnx_graph.load(fp32_package.onnx_path())
    wrong = fold(plain, "zero_centered", 0.5)  # normalization that training did not use
    frames = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 1), dtype=np.uint8)
    frames[:, 20:40, 20:40] = 30
    with pytest.raises(FoldError, match="differs from the plain graph"):
        check_fold(plain, wrong, frames, "zero_one", 0.5)


def test_gate_compare_bounds():
    rng = np.random.default_rng(0)
    ref = np.zeros((4, 32, 32), np.float32)
    ref[:2, 5:15, 5:15] = 0.9
    same = compare(
        ref,
        ref + rng.normal(0, 1e-4, ref.shape),
        name="t",
        threshold=0.5,
        min_defect_area=4,
        bounds=FP16_BOUNDS,
    )
    assert same.passed and same.dice == 1.0 and same.agreement == 1.0
    nan = ref.copy()
    nan[3, 0, 0] = np.nan
    bad = compare(ref, nan, name="t", threshold=0.5, min_defect_area=4, bounds=FP16_BOUNDS)
    assert not bad.passed and bad.nonfinite == 1 and bad.agreement == 0.75
    shrunk = ref.copy()
    shrunk[:2, 5:15, 5:8] = 0.1
    worse = compare(ref, shrunk, name="t", threshold=0.5, min_defect_area=4, bounds=FP16_BOUNDS)
    assert not worse.passed and worse.dice < 0.99 and worse.agreement == 1.0


def test_gate_decision_matches_the_line():
    from edge.config import DecisionConfig
    from edge.postprocess import FAIL, decide

    rng = np.random.default_rng(0)
    for _ in range(30):
        prob = (rng.random((24, 24)) > 0.93).astype(np.float32)
        prob[rng.integers(0, 20) :][:, :3] *= rng.integers(0, 2)
        min_area = int(rng.integers(1, 5))
        line = decide(prob, DecisionConfig(threshold=0.5, min_defect_area=min_area)).decision == FAIL
        assert is_fail(prob, 0.5, min_area) == line
