"""``model.precision: auto`` on ONNX Runtime: the INT8 graph runs only where `lineside gate
--backend onnxruntime` passed it and timed it faster than FP32 on this CPU model.

The package is test_openvino's small real network (dark blobs -> defect probability) with a
real INT8 Q/DQ graph laid out for ONNX Runtime; the gate and the sessions are real ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from converter.backend_gate import gate_onnxruntime
from converter.cpu import cpu_model
from converter.manifest import ModelManifest
from converter.package import ModelPackage, sha256_file
from converter.samples import SampleError
from converter.variants import add_variants
from edge.backends.choice import choose_backend, onnxruntime_precision, plan_backend
from edge.config import ModelConfig
from tests.converter.conftest import write_defect_dataset
from tests.edge.test_openvino import write_blob_package

KEY = "onnxruntime:int8"


@pytest.fixture(scope="module")
def int8_package(tmp_path_factory) -> Path:
    """A package with its FP32 graph and an INT8 graph for ONNX Runtime (export gate passed)."""
    root = tmp_path_factory.mktemp("ort-precision")
    data = write_defect_dataset(root / "data", count=48)
    package = add_variants(
        write_blob_package(root / "pkg", data),
        data_dir=None,
        precisions=("int8",),
        gate_samples=16,
        calibration_samples=8,
        int8_target="onnxruntime",
    )
    assert package.manifest.gates["int8"]["passed"]
    return package.root


@pytest.fixture
def package(int8_package: Path, tmp_path: Path) -> ModelPackage:
    """A copy a test may gate and change."""
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(int8_package, copy)
    return ModelPackage.open(copy)


def timed(package: ModelPackage, int8: float, fp32: float, cpu: str | None = None) -> ModelPackage:
    """Run the gate for real, then set the speeds it timed (timing on a shared box is noise)."""
    gate_onnxruntime(package.root, samples=16)
    m = ModelManifest.load(package.root)
    m.gates[KEY]["speed"].update(onnxruntime_int8_img_per_s=int8, onnxruntime_fp32_img_per_s=fp32)
    if cpu is not None:
        m.gates[KEY]["speed"]["cpu"] = cpu
    m.save(package.root)
    return ModelPackage.open(package.root)


def test_the_gate_records_accuracy_and_both_speeds_on_this_cpu(package):
    report, key = gate_onnxruntime(package.root, samples=16)
    assert key == KEY and report.passed, report.summary()
    gate = ModelManifest.load(package.root).gates[KEY]
    assert gate["backend"] == "onnxruntime" and gate["graph"] == "model.int8.onnx"
    assert gate["graph_sha256"] == sha256_file(package.root / "model.int8.onnx")
    speed = gate["speed"]
    assert speed["cpu"] == cpu_model() and speed["batch"] == 8
    assert speed["onnxruntime_int8_img_per_s"] > 0 and speed["onnxruntime_fp32_img_per_s"] > 0
    # the export's own int8 gate is left as it was
    assert ModelManifest.load(package.root).gates["int8"]["passed"]


def test_auto_runs_int8_only_where_it_passed_and_was_faster_here(package):
    assert onnxruntime_precision(package, "auto") == (
        "fp32",
        f"auto: fp32 (gate {KEY} was never run; run `lineside gate {package.root} --backend onnxruntime`)",
    )
    faster = timed(package, int8=30.0, fp32=20.0)
    precision, why = onnxruntime_precision(faster, "auto")
    assert precision == "int8" and "30.0 img/s against FP32's 20.0" in why
    # a configured precision is run as configured, whatever the gates say
    assert onnxruntime_precision(faster, "fp32")[0] == "fp32"
    assert onnxruntime_precision(timed(package, int8=15.0, fp32=20.0), "auto")[0] == "fp32"
    # within the timing's noise: not worth INT8's small loss of accuracy
    assert onnxruntime_precision(timed(package, int8=20.5, fp32=20.0), "auto")[1].endswith(
        "not 1.05x faster)"
    )
    elsewhere = timed(package, int8=30.0, fp32=20.0, cpu="Some Other CPU")
    assert onnxruntime_precision(elsewhere, "auto") == (
        "fp32",
        f"auto: fp32 (gate {KEY} timed 'Some Other CPU', not this {cpu_model()!r}; run it here)",
    )


def test_auto_does_not_trust_a_failed_gate_or_a_changed_graph(package):
    faster = timed(package, int8=30.0, fp32=20.0)
    m = ModelManifest.load(faster.root)
    m.gates[KEY]["passed"] = False
    m.save(faster.root)
    assert (
        onnxruntime_precision(ModelPackage.open(faster.root), "auto")[1] == f"auto: fp32 (gate {KEY} failed)"
    )
    m.gates[KEY]["passed"] = True
    m.gates[KEY]["graph_sha256"] = "0" * 64  # another INT8 graph was gated than the one now here
    m.save(faster.root)
    precision, why = onnxruntime_precision(ModelPackage.open(faster.root), "auto")
    assert precision == "fp32" and "changed after gate" in why


def test_the_line_loads_the_graph_auto_chose(package):
    faster = timed(package, int8=30.0, fp32=20.0)
    choice = plan_backend("onnxruntime", faster, precision="auto")
    assert (choice.kind, choice.path.name, choice.precision) == ("onnxruntime", "model.int8.onnx", "int8")
    cfg = SimpleNamespace(model=ModelConfig(package=str(faster.root), backend="auto", threads=1))
    backend, why = choose_backend(cfg, faster)
    assert "model.int8.onnx" in backend.describe() and "auto: int8" in why
    slower = timed(package, int8=10.0, fp32=20.0)
    backend, why = choose_backend(cfg, slower)
    assert "model.onnx" in backend.describe() and "auto: fp32 (INT8 ran 10.0" in why


def test_gate_command_and_its_refusals(package, capsys):
    from edge.cli import main

    assert main(["gate", str(package.root), "--backend", "onnxruntime", "--samples", "16"]) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime INT8" in out and "img/s" in out and f"gates[{KEY!r}]" in out
    with pytest.raises(SampleError, match="gates int8 or fp16 against fp32, not bf16"):
        gate_onnxruntime(package.root, precision="bf16")
    with pytest.raises(SampleError, match="the package has no fp16 graph"):
        gate_onnxruntime(package.root, precision="fp16")
    assert main(["gate", str(package.root), "--backend", "onnxruntime", "--precision", "bf16"]) == 2
    assert "not bf16" in capsys.readouterr().err
