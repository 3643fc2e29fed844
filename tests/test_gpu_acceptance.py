"""scripts/gpu-acceptance.sh on this box: what it can run passes, the rest is skipped with the
reason, a failed step makes exit 1; the near-free graph it uses; its worker check against the fakes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_doctor import HAS_TRT, write_tiny_package

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu-acceptance.sh"


def load_driver():
    """scripts/gpu_acceptance.py as a module (scripts/ is not a package)."""
    if "gpu_acceptance" in sys.modules:
        return sys.modules["gpu_acceptance"]
    spec = importlib.util.spec_from_file_location("gpu_acceptance", ROOT / "scripts" / "gpu_acceptance.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_acceptance"] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def test_near_free_graph_has_the_package_io_and_computes_sigmoid_x_minus_10(tmp_path):
    from converter import onnx_graph
    from converter.package import ModelPackage
    from edge.bench import near_free_package  # shared by the script's step 11 and `lineside bench --null`

    package = write_tiny_package(tmp_path / "pkg", size=16)
    free = ModelPackage.open(near_free_package(package, tmp_path / "free"))
    assert free.verify() == []  # the manifest records the new graph's sha256
    free.check_graph_io("fp32")
    x = np.random.default_rng(0).random((2, 16, 16, 1), dtype=np.float32) * 20
    out = onnx_graph.session(free.onnx_path("fp32")).run(None, {"image": x})[0]
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-(x - 10))), rtol=1e-5, atol=1e-6)


@pytest.fixture
def no_tensorflow(monkeypatch):
    """This box has TensorFlow; the run must also work where it does not."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a)
    )


def test_without_a_package_or_tensorflow_each_step_says_why(tmp_path, no_tensorflow, monkeypatch):
    driver = load_driver()
    monkeypatch.chdir(ROOT)
    assert driver.main(["--quick", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    steps = {s["number"]: s for s in report["steps"]}
    assert sorted(steps) == list(range(1, 12))
    assert steps[1]["status"] == "pass"
    assert report["exit_code"] == 0 and report["summary"]["fail"] == 0
    for step in steps.values():
        assert step["status"] in ("pass", "skipped"), step
        if step["status"] == "skipped":
            assert step["reason"], step
    assert "no model package" in steps[11]["reason"] and "TensorFlow" in steps[11]["reason"]
    if not HAS_TRT:
        assert all("TensorRT is not usable here" in steps[n]["reason"] for n in range(2, 10))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 11 | line scaling with workers (ONNX Runtime) | SKIPPED |" in md


def test_a_failed_step_makes_exit_1_and_is_reported(tmp_path, no_tensorflow, monkeypatch):
    driver = load_driver()
    monkeypatch.chdir(ROOT)

    def broken(self, step):
        raise driver.Fail("the CUDA round trip changed the data")

    monkeypatch.setattr(driver.Acceptance, "do_cuda", broken)
    assert driver.main(["--quick", "--out", str(tmp_path / "out")]) == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    step = next(s for s in report["steps"] if s["number"] == 10)
    assert step["status"] == "fail" and "round trip" in step["reason"] and report["exit_code"] == 1
    assert "| 10 | CUDA context and buffers" in (tmp_path / "out" / "report.md").read_text()


def test_worker_check_against_the_fakes(tmp_path, monkeypatch):
    """The worker-thread check's own control flow (profile edges, loop, free, reactivate on the
    same thread) against the fake TensorRT/pycuda: the fake engine takes 32x32 images, batch 2-4."""
    from converter.package import ModelPackage
    from tests.converter import fake_trt
    from tests.converter.test_engine_plain import L4, _add_engine

    pycuda, drv, memory = fake_trt.make_pycuda()
    trt = fake_trt.make_tensorrt(memory, profile=((2, 32, 32, 1), (4, 32, 32, 1), (4, 32, 32, 1)))
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    package = write_tiny_package(tmp_path / "pkg", size=32)
    plan = _add_engine(ModelPackage.open(package), L4, "fp32")
    plan.write_bytes(fake_trt.PLAN_BYTES)  # what the fake runtime deserializes
    out = tmp_path / "worker.json"
    assert load_driver().worker_check(str(package), str(plan), str(out), 0.2) == 0
    result = json.loads(out.read_text())
    assert result["batches"] == [1, 8, 9]  # the manifest's profile is 1..8: 1, max, max+1
    assert result["loop_runs"] > 0 and result["reactivated_shape"] == [1, 32, 32]
    assert result["memory_grown_mib"] is None  # no NVML here: said, not invented
    assert memory == {} and drv.stacks() == ([], [])  # freed, every push popped


def test_device_memory_is_gpu_0s_as_nvml_reports_it(monkeypatch):
    from tests.converter.test_engine_build import _fake_nvml

    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([]))
    assert load_driver()._device_used_mib() == 300
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([], count=0))
    assert load_driver()._device_used_mib() is None
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert load_driver()._device_used_mib() is None


@pytest.mark.slow
def test_the_script_runs_here_with_a_package_and_skips_the_gpu_steps(tmp_path):
    """The shell entry point, end to end on this CPU box (90-150 s on 2 cores: four short line runs)."""
    package = write_tiny_package(tmp_path / "pkg", size=32)
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        [str(SCRIPT), str(package), "--quick", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    steps = {s["number"]: s for s in report["steps"]}
    assert steps[1]["status"] == "pass" and steps[11]["status"] == "pass"
    scaling = steps[11]["details"]
    assert [r["workers"] for r in scaling["model"]["rows"]] == [1, 2]
    assert [r["workers"] for r in scaling["near-free graph"]["rows"]] == [1, 2]
    assert all(r["img_per_s"] > 0 for v in scaling.values() for r in v["rows"])
    # each row says what it was offered, and whether it only measured that offer
    for v in scaling.values():
        assert v["cameras"] == max(2, (os.cpu_count() or 1) // 4)
        for r in v["rows"]:
            assert r["offered_per_s"] == pytest.approx(v["cameras"] * v["fps_per_camera"])
            assert r["offer_bound"] == (r["img_per_s"] >= 0.95 * r["offered_per_s"])
    bound = any(r["offer_bound"] for v in scaling.values() for r in v["rows"])
    assert ("took all that was offered" in steps[11]["reason"]) == bound
    if not HAS_TRT:
        for n in range(2, 10):
            assert steps[n]["status"] == "skipped" and "TensorRT is not usable here" in steps[n]["reason"]
        assert steps[10]["status"] == "skipped" and "pycuda" in steps[10]["reason"]
    assert (tmp_path / "out" / "report.md").is_file()
