"""The OpenVINO backend, its accuracy gate and ``backend: auto``'s ranking, with the real OpenVINO.

The package is a small real network built with onnx.helper (3x3 mean, ReLU, 1x1 conv,
sigmoid: dark blobs -> defect probability) on a data set of textured images with dark
defects, so the gate compares real masks and decisions; no TensorFlow needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from converter import openvino_runtime as ovr
from converter.backend_gate import gate_openvino
from converter.gate import FP16_BOUNDS, INT8_BOUNDS, compare
from converter.manifest import InputSpec, ModelManifest, OutputSpec
from converter.package import ModelPackage, sha256_file
from converter.preprocessing import normalize
from converter.samples import load_samples
from edge.backends.base import BackendError
from edge.backends.choice import choose_backend, plan_backend
from edge.config import ModelConfig
from tests.conftest import need_peer
from tests.converter.conftest import write_defect_dataset

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64


@pytest.fixture(autouse=True)
def _openvino_installed() -> None:
    # CI installs it with the dev extra (LINESIDE_REQUIRE_PEERS turns this skip into a failure)
    need_peer(None if importlib.util.find_spec("openvino") else "OpenVINO: pip install -e '.[dev]'")


def write_blob_graph(path: Path, size: int = SIZE) -> Path:
    """NHWC float image -> per-pixel probability of a dark blob (a real 2-conv network)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = (
        np.full((4, 1, 3, 3), 1 / 9, np.float32)
        * np.array([1.0, 0.9, 1.1, 1.0], np.float32)[:, None, None, None]
    )
    w2 = np.full((1, 4, 1, 1), -30 / 4, np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.array([13.5], np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        helper.make_node("Sigmoid", ["c2"], ["s"]),
        helper.make_node("Transpose", ["s"], ["probability"], perm=[0, 2, 3, 1]),
    ]
    shape = ["batch", size, size, 1]
    graph = helper.make_graph(
        nodes,
        "blob",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory) -> Path:
    return write_defect_dataset(tmp_path_factory.mktemp("ov-data"), count=48)


def write_blob_package(folder: Path, data: Path) -> ModelPackage:
    """An FP32 package of the blob graph whose manifest names ``data`` as its data set."""
    folder.mkdir(parents=True)
    graph = write_blob_graph(folder / "model.onnx")
    ModelManifest(
        model_id="blob",
        architecture="blob",
        input=InputSpec(name="image", height=SIZE, width=SIZE, channels=1),
        output=OutputSpec(name="probability"),
        threshold=0.5,
        min_defect_area=8,
        dataset={"kind": "folders", "root": str(data), "classes": []},
        files={"fp32": "model.onnx"},
        files_sha256={"model.onnx": sha256_file(graph)},
    ).save(folder)
    return ModelPackage.open(folder)


@pytest.fixture
def package(tmp_path, blob_data) -> ModelPackage:
    """A fresh FP32 package (no OpenVINO gate yet) that a test may change."""
    return write_blob_package(tmp_path / "pkg", blob_data)


def cfg(package: ModelPackage, backend: str, device: str = "CPU") -> SimpleNamespace:
    return SimpleNamespace(
        model=ModelConfig(package=str(package.root), backend=backend, device=device, threads=1)
    )


def here() -> tuple[str, str]:
    """The precision OpenVINO runs fastest on this CPU for an FP32-only package, and its gates key."""
    precision, _ = ovr.choose_precision(ovr.probe(), "CPU", has_int8_graph=False)
    return precision, ovr.gate_key("CPU", precision)


def gate_as_timed(package: ModelPackage, openvino: float, onnxruntime: float, cpu: str | None = None) -> None:
    """Run the gate for real, then set the speeds it timed (timing on a shared box is noise)."""
    _, key = here()
    gate_openvino(package.root, samples=8)
    m = ModelManifest.load(package.root)
    speed = m.gates[key].setdefault("speed", {"cpu": ovr.probe().cpu_name, "batch": 8, "rounds": 5})
    speed.update(openvino_img_per_s=openvino, onnxruntime_fp32_img_per_s=onnxruntime)
    if cpu is not None:
        speed["cpu"] = cpu
    m.save(package.root)


def gate_images(package: ModelPackage, count: int = 16) -> np.ndarray:
    m = package.manifest
    samples = load_samples(m.dataset["root"], SIZE, SIZE, 1, count)
    return normalize(samples.images, m.normalization)


# -- the backend against ONNX Runtime FP32 ---------------------------------------------------------


def test_openvino_backend_equals_onnxruntime_fp32_within_its_gate(package):
    from edge.backends.onnxrt import OnnxRuntimeBackend
    from edge.backends.openvino import OpenVINOBackend

    precision, _ = here()
    images = gate_images(package)
    with OnnxRuntimeBackend(package.onnx_path(), threads=1) as ort:
        want = ort.infer(images)
    with OpenVINOBackend(package.onnx_path(), "CPU", precision, threads=1) as ov:
        got = np.concatenate(
            [ov.infer(images[i : i + 5]) for i in range(0, len(images), 5)]
        )  # uneven batches
        assert "openvino CPU" in ov.describe() and precision in ov.describe()
    assert got.shape == want.shape == (len(images), SIZE, SIZE)
    report = compare(want, got, name="ov", threshold=0.5, min_defect_area=8, bounds=FP16_BOUNDS)
    assert report.passed, report.summary()
    assert report.reference_defect_pixels > 0 and report.reference_fail_images > 0  # the masks mean something
    if precision == "fp32":
        assert report.max_abs_diff < 1e-4


def test_gate_records_the_result_per_backend_and_precision(package):
    precision, key = here()
    old_gates = dict(package.manifest.gates)
    report, recorded = gate_openvino(package.root, samples=16)
    assert recorded == key and report.passed, report.summary()
    gates = ModelPackage.open(package.root).manifest.gates
    assert gates[key]["passed"] is True and gates[key]["precision"] == precision
    assert gates[key]["graph_sha256"] == sha256_file(package.onnx_path())
    assert gates[key]["bounds"] == {
        "min_dice": FP16_BOUNDS.min_dice,
        "min_agreement": FP16_BOUNDS.min_agreement,
    }
    assert all(gates[k] == v for k, v in old_gates.items())  # existing keys keep their meaning


def test_gate_keeps_a_schema_1_package_readable(package):
    """A package exported before graph hashes (schema 1) still opens after a gate is recorded in it."""
    data = json.loads((package.root / "manifest.json").read_text())
    data["schema_version"] = 1
    del data["files_sha256"]
    (package.root / "manifest.json").write_text(json.dumps(data))
    _, key = gate_openvino(package.root, samples=8)
    reopened = ModelPackage.open(package.root)
    assert reopened.manifest.schema_version == 1 and reopened.manifest.gates[key]["passed"] is True
    assert reopened.verify() == [
        "model.onnx"
    ]  # still unchecked, as before: the gate vouches for nothing else


def test_int8_graph_gated_with_the_int8_bounds(package):
    """The package's Q/DQ graph on OpenVINO (int8 kernels) against ONNX Runtime FP32."""
    from converter.variants import add_variants

    pkg = add_variants(package, data_dir=None, precisions=("int8",), gate_samples=16, calibration_samples=8)
    report, key = gate_openvino(pkg.root, samples=16, precision="int8")
    assert key == "openvino:int8" and report.passed, report.summary()
    gate = ModelPackage.open(pkg.root).manifest.gates[key]
    assert gate["graph"] == "model.int8.onnx" and gate["bounds"]["min_dice"] == INT8_BOUNDS.min_dice
    # the export's split: the INT8 gate's images, none of those that calibrated the graph
    assert gate["images"] == ModelPackage.open(pkg.root).manifest.gates["int8"]["images"]


def test_a_precision_the_cpu_does_not_compute_in_is_not_gated(package):
    facts = ovr.probe()
    if "BF16" in facts.capabilities:
        report, key = gate_openvino(package.root, samples=8, precision="bf16")
        assert key == "openvino:bf16" and report.passed, report.summary()
    else:  # a bf16 hint would silently run FP32 here: recording it as a bf16 gate would be a lie
        with pytest.raises(ovr.OpenVINOError, match=r"does not compute in bf16 \(it can: fp32"):
            gate_openvino(package.root, samples=8, precision="bf16")
        assert "openvino:bf16" not in ModelPackage.open(package.root).manifest.gates


def test_precision_choice_follows_the_cpu():
    amx = ovr.Facts("2026.4", ("CPU",), ("FP32", "BF16", "INT8"), flags=frozenset({"amx_bf16", "amx_int8"}))
    vnni = ovr.Facts("2026.4", ("CPU",), ("FP32", "INT8"), flags=frozenset({"avx512_vnni"}))
    avx2 = ovr.Facts("2026.4", ("CPU",), ("FP32", "INT8"), flags=frozenset({"avx2"}))
    assert ovr.choose_precision(amx, "CPU", True)[0] == "bf16"
    assert ovr.choose_precision(vnni, "CPU", True)[0] == "int8"
    assert ovr.choose_precision(vnni, "CPU", False) == (
        "fp32",
        "the CPU has VNNI but the package has no INT8 graph (lineside export --precision int8)",
    )
    assert ovr.choose_precision(avx2, "CPU", True)[0] == "fp32"
    assert ovr.choose_precision(amx, "GPU.0", True)[0] == "fp16"
    assert (
        ovr.gate_key("GPU.0", "fp16") == "openvino-gpu:fp16"
        and ovr.gate_key("CPU", "bf16") == "openvino:bf16"
    )
    assert ovr.cpu_flags("/nonexistent") == frozenset()


# -- backend: auto / openvino -----------------------------------------------------------------------


def test_auto_runs_openvino_once_gated(package):
    precision, key = here()
    gate_openvino(package.root, samples=8)
    speed = ModelPackage.open(package.root).manifest.gates[key].get("speed", {})
    assert speed["openvino_img_per_s"] > 0 and speed["onnxruntime_fp32_img_per_s"] > 0 and speed["batch"] == 8
    gate_as_timed(package, openvino=20.0, onnxruntime=10.0)
    pkg = ModelPackage.open(package.root)
    backend, reason = choose_backend(cfg(pkg, "auto"), pkg)
    assert backend.name == "openvino" and backend.precision == precision
    assert reason.startswith("no usable TensorRT engine") and f"gate {key} passed" in reason
    backend, reason = choose_backend(cfg(pkg, "openvino"), pkg)
    assert backend.name == "openvino" and "TensorRT" not in reason
    with backend:  # it really runs
        assert backend.infer(gate_images(pkg, 2)).shape == (2, SIZE, SIZE)


def test_auto_keeps_onnxruntime_where_openvino_fp32_was_slower(package):
    """Both compute in FP32 there: auto takes OpenVINO only where the gate timed it faster on this CPU."""
    precision, _ = here()
    gate_as_timed(package, openvino=10.0, onnxruntime=20.0)
    backend, reason = choose_backend(cfg(package, "auto"), ModelPackage.open(package.root))
    if precision != "fp32":  # bf16/int8 on this CPU: the speed of FP32 does not matter
        assert backend.name == "openvino"
        return
    assert backend.name == "onnxruntime"
    assert "it ran 10.0 img/s against ONNX Runtime FP32's 20.0 img/s when gated on this CPU" in reason
    assert (
        choose_backend(cfg(package, "openvino"), ModelPackage.open(package.root))[0].name == "openvino"
    )  # asked for: runs
    gate_as_timed(package, openvino=20.0, onnxruntime=10.0, cpu="Some Other CPU")
    backend, reason = choose_backend(cfg(package, "auto"), ModelPackage.open(package.root))
    assert backend.name == "onnxruntime" and "timed it on 'Some Other CPU'" in reason


def test_auto_skips_openvino_without_a_passed_gate_and_openvino_refuses(package):
    _, key = here()
    # never run: an old package without the key still opens, and auto says why it skipped OpenVINO
    backend, reason = choose_backend(cfg(package, "auto"), package)
    assert backend.name == "onnxruntime"
    assert f"gate {key} was never run; run `lineside gate {package.root} --backend openvino`" in reason
    with pytest.raises(BackendError, match=rf"backend openvino: .*gate {key} was never run") as exc:
        choose_backend(cfg(package, "openvino"), package)
    assert "\n" not in str(exc.value) and "set model.backend to auto or onnxruntime" in str(exc.value)

    # failed
    gate_openvino(package.root, samples=8)
    m = ModelManifest.load(package.root)
    m.gates[key].update(passed=False, reasons=["Dice 0.5 < 0.99"])
    m.save(package.root)
    pkg = ModelPackage.open(package.root)
    backend, reason = choose_backend(cfg(pkg, "auto"), pkg)
    assert backend.name == "onnxruntime" and f"gate {key} failed (Dice 0.5 < 0.99)" in reason
    with pytest.raises(BackendError, match=rf"gate {key} failed"):
        choose_backend(cfg(pkg, "openvino"), pkg)

    # passed, but on a graph the package no longer holds
    m.gates[key].update(passed=True, graph_sha256="0" * 64)
    m.save(package.root)
    pkg = ModelPackage.open(package.root)
    backend, reason = choose_backend(cfg(pkg, "auto"), pkg)
    assert backend.name == "onnxruntime" and "was run on another model.onnx" in reason


def test_auto_prefers_a_fitting_tensorrt_engine(package):
    from tests.converter.test_engine_plain import L4, _add_engine

    gate_openvino(package.root, samples=8)
    pkg = ModelPackage.open(package.root)
    plan = _add_engine(pkg, L4, "fp32")
    backend, reason = choose_backend(cfg(pkg, "auto"), pkg, machine=L4)
    assert backend.name == "tensorrt" and backend.plan_path == plan and reason.startswith("tensorrt:")
    # backend: openvino means OpenVINO even where an engine fits
    backend, _ = choose_backend(cfg(pkg, "openvino"), pkg, machine=L4)
    assert backend.name == "openvino"


def test_a_device_openvino_does_not_list_is_one_line(package):
    gate_openvino(package.root, samples=8)
    with pytest.raises(BackendError, match=r"OpenVINO device NPU is not on this box .*set model.device"):
        choose_backend(cfg(package, "openvino", device="NPU"), package)
    choice = plan_backend("auto", package, device="NPU", openvino=ovr.probe())
    assert choice.kind == "onnxruntime" and "NPU is not on this box" in choice.reason


def test_worker_opens_with_backend_openvino(package):
    from edge.config import parse_config
    from edge.worker import open_worker

    gate_openvino(package.root, samples=8)
    line = parse_config(
        {
            "model": {"package": str(package.root), "backend": "openvino", "threads": 1},
            "cameras": [{"id": "a"}],
            "metrics": {"port": 0},
        }
    )
    worker = open_worker(line, "w-ov")
    try:
        assert worker.backend.name == "openvino"
    finally:
        worker.close()


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    # the child sees no openvino module, as on a box where it is not installed
    prelude = "import sys; sys.modules['openvino'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_openvino_missing_is_one_line(package):
    proc = _run("from edge.cli import main; sys.exit(main(sys.argv[1:]))", "gate", str(package.root))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "lineside: error: OpenVINO is not installed; pip install 'lineside[openvino]'"
    )
    code = (
        "import json; from types import SimpleNamespace; from converter.package import ModelPackage\n"
        "from edge.config import ModelConfig; from edge.backends.choice import choose_backend\n"
        "p = ModelPackage.open(sys.argv[1]); out = {}\n"
        "b, why = choose_backend(SimpleNamespace(model=ModelConfig(backend='auto')), p)\n"
        "out['auto'] = [b.name, why]\n"
        "try:\n    choose_backend(SimpleNamespace(model=ModelConfig(backend='openvino')), p)\n"
        "except Exception as e:\n    out['openvino'] = str(e)\n"
        "print(json.dumps(out))\n"
    )
    proc = _run(code, str(package.root))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["auto"][0] == "onnxruntime" and "pip install 'lineside[openvino]'" in out["auto"][1]
    assert out["openvino"] == (
        "backend openvino: OpenVINO is not installed; pip install 'lineside[openvino]'; "
        "or set model.backend to auto or onnxruntime"
    )


def test_doctor_shows_the_choice_and_why(package, tmp_path):
    from edge import doctor as doc
    from tests.test_doctor import line_config

    precision, key = here()
    report = doc.collect(str(package.root))
    ov = report["backends"]["openvino"]
    assert ov["usable"] is True and ov["cpu_precision"] in ("fp32", "bf16", "int8") and "gate" in ov["why"]
    assert report["package"]["would_run"] == "onnxruntime model.onnx (fp32)"
    assert f"gate {key} was never run" in report["package"]["why"]
    config = line_config(tmp_path, package.root, "openvino")
    report = doc.collect(None, str(config))
    assert report["exit_code"] == 1 and "was never run" in report["config"]["why"]

    gate_as_timed(package, openvino=20.0, onnxruntime=10.0)
    report = doc.collect(str(package.root))
    assert report["package"]["would_run"] == f"openvino model.onnx ({precision}, CPU)"
    assert f"this box would run: openvino model.onnx ({precision}, CPU)" in doc.render(report)
    report = doc.collect(None, str(config))
    assert report["exit_code"] == 0 and f"gate {key} passed" in report["config"]["why"]
