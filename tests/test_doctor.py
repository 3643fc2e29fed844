"""``lineside doctor``: run for real as a subprocess on this box (no TensorRT, no GPU), and the
TensorRT-usable branch in-process against the fake tensorrt/pycuda modules."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from converter.package import ModelPackage
from tests.packages import write_bright_package

ROOT = Path(__file__).resolve().parent.parent
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def write_tiny_package(folder: Path, size: int = 32) -> Path:
    """A model package without TensorFlow: the untrained onnx.helper package of tests/packages.py."""
    return write_bright_package(folder, size=size, model_id="tiny-doctor", min_defect_area=4)


def doctor(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        check=False,
    )


def line_config(tmp_path: Path, package: Path, backend: str) -> Path:
    path = tmp_path / f"line-{backend}.yaml"
    config = {
        "name": "doctor",
        "model": {"package": str(package), "backend": backend},
        "cameras": [{"id": "cam1", "source": "synthetic", "fps": 1}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory) -> Path:
    return write_tiny_package(tmp_path_factory.mktemp("doctor") / "pkg")


@pytest.mark.skipif(HAS_TRT, reason="this box has TensorRT: the missing-TensorRT screen cannot be shown")
def test_the_screen_names_what_is_missing_and_exits_0_with_onnxruntime(tiny_package):
    proc = doctor(str(tiny_package))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    out = proc.stdout
    for name in (
        "python",
        "onnxruntime",
        "openvino",
        "tensorrt",
        "pycuda",
        "nvidia-ml-py",
        "opencv",
        "tensorflow",
    ):
        assert f"  {name}" in out, name
    assert "video: FFmpeg" in out and "GStreamer" in out
    assert "GPUs           none found" in out
    tensorrt = next(
        line for line in out.splitlines() if line.lstrip().startswith("tensorrt ") and "usable" in line
    )
    assert "NOT usable" in tensorrt and "not installed" in tensorrt
    assert "pip install -e '.[gpu-cu12]'" in out  # the one command that fixes it
    # the package: no engine, so ONNX Runtime on its FP32 graph, and the reason
    assert "this box would run: onnxruntime model.onnx (fp32): no usable TensorRT engine" in out


def test_json_parses_and_tensorflow_is_not_imported(tiny_package):
    code = (
        "import json, sys; from edge.doctor import collect; r = collect(sys.argv[1]); "
        "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'exit': r['exit_code']}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tiny_package)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"tf": False, "exit": 0}

    proc = doctor(str(tiny_package), "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == report["exit_code"] == 0
    assert report["backends"]["onnxruntime"]["usable"] is True
    assert "CPUExecutionProvider" in report["onnxruntime_providers"]
    assert report["package"]["would_run"].startswith("onnxruntime model.onnx")
    assert report["versions"]["numpy"] and report["versions"]["pyzmq"]
    if not HAS_TRT:
        assert report["backends"]["tensorrt"]["usable"] is False
        assert "gpu-cu1" in report["backends"]["tensorrt"]["fix"]


@pytest.mark.skipif(HAS_TRT, reason="this box has TensorRT: a tensorrt line may well be runnable here")
def test_config_exit_codes(tiny_package, tmp_path):
    auto = doctor("--config", str(line_config(tmp_path, tiny_package, "auto")))
    assert auto.returncode == 0, auto.stdout + auto.stderr
    assert "runs ONNX Runtime on model.onnx" in auto.stdout

    trt = doctor("--config", str(line_config(tmp_path, tiny_package, "tensorrt")))
    assert trt.returncode == 1, trt.stdout + trt.stderr
    assert "NOT runnable" in trt.stdout and "backend tensorrt but no engine is usable here" in trt.stdout

    missing = doctor("--config", str(line_config(tmp_path, tmp_path / "absent", "auto")), "--json")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "cannot be opened" in json.loads(missing.stdout)["config"]["why"]

    bad = doctor("--config", str(tmp_path / "nope.yaml"))
    assert bad.returncode == 1 and "config file not found" in bad.stdout and "Traceback" not in bad.stderr


def test_a_broken_onnxruntime_is_reported_not_raised(monkeypatch, tiny_package):
    """ONNX Runtime that cannot import (a broken wheel): doctor says so, names the fix, exits 1."""
    from edge import doctor as doc

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    report = doc.collect(str(tiny_package))
    ort = report["backends"]["onnxruntime"]
    assert ort["usable"] is False and "does not import" in ort["why"] and ort["fix"] == doc.FIX_ONNXRUNTIME
    assert report["exit_code"] == 1
    assert "NO: ONNX Runtime does not work" in doc.render(report)


def test_parse_video_io_reads_only_top_level_entries():
    from edge.doctor import parse_video_io

    info = (
        "General configuration:\n  x: y\n\n  Video I/O:\n    DC1394:                      NO\n"
        "    FFMPEG:                      YES\n      avcodec:                   YES (60.3.100)\n"
        "    GStreamer:                   YES (1.22.0)\n"
        "    v4l/v4l2:                    YES (linux/videodev2.h)\n"
        "\n  Parallel framework:            pthreads\n"
    )
    assert parse_video_io(info) == {
        "DC1394": "NO",
        "FFMPEG": "YES",
        "GStreamer": "YES (1.22.0)",
        "v4l/v4l2": "YES (linux/videodev2.h)",
    }
    assert parse_video_io("no such section") == {}


@pytest.mark.parametrize(
    ("driver", "fix"),
    [("580.65.06", "gpu-cu13"), ("575.57.08", "gpu-cu12"), ("535.183.01", "gpu-cu12"), (None, "gpu-cu12")],
)
def test_the_tensorrt_fix_follows_the_driver(driver, fix):
    from edge.doctor import tensorrt_fix

    assert fix in tensorrt_fix(driver)


def test_tensorrt_usable_branch_with_fake_modules(monkeypatch, tmp_path):
    """With TensorRT and pycuda present (the fakes) and an engine built for this GPU, the doctor
    says TensorRT is usable, lists the GPU, picks the engine and a tensorrt line is runnable."""
    from edge import doctor as doc
    from tests.converter import fake_trt
    from tests.converter.test_engine_plain import L4, _add_engine

    pycuda, driver, memory = fake_trt.make_pycuda()
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt.make_tensorrt(memory))
    package = write_tiny_package(tmp_path / "pkg")
    plan = _add_engine(ModelPackage.open(package), L4, "fp32")

    report = doc.collect(str(package))
    trt = report["backends"]["tensorrt"]
    assert trt["usable"] is True and "NVIDIA L4" in trt["why"] and not trt["fix"]
    assert report["gpus"][0]["name"] == "NVIDIA L4" and report["gpus"][0]["compute_capability"] == "8.9"
    assert report["gpu_source"] == "pycuda"
    assert report["cuda"]["toolkit"] == "12.9.0" and report["cuda"]["driver_api"] == "12.9"
    assert report["machine"]["gpu_name"] == "NVIDIA L4"
    assert report["package"]["engine"] == plan.name
    assert report["package"]["would_run"] == f"tensorrt {plan.name}"
    screen = doc.render(report)
    assert "tensorrt     usable" in screen and f"this box would run: tensorrt {plan.name}" in screen

    config = line_config(tmp_path, package, "tensorrt")
    report = doc.collect(None, str(config))
    assert report["config"]["runnable"] is True and report["exit_code"] == 0
    assert plan.name in report["config"]["why"]

    # the same engine no longer fits once the GPU differs: a tensorrt line is not runnable (exit 1),
    # and the reason names both GPUs
    monkeypatch.setattr(driver.Device, "name", lambda self: "NVIDIA A2")
    report = doc.collect(None, str(config))
    assert report["exit_code"] == 1 and "NVIDIA A2" in report["config"]["why"]
    assert "NVIDIA L4" in report["config"]["why"]


def test_a_cuda_13_tensorrt_on_an_old_driver_names_the_cuda_12_build(monkeypatch):
    """TensorRT 11 (CUDA 13 only) installed on a driver older than r580: the fix is the cu12 extra."""
    from edge import doctor as doc

    monkeypatch.setattr(doc, "dist_version", lambda name: "11.4.0.106" if name == "tensorrt" else None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = doc.probe_tensorrt("575.57.08", gpus_found=True)
    assert result["usable"] is False and "CUDA 13 only" in result["why"] and "r580" in result["why"]
    assert result["fix"].endswith(doc.FIX_CU12)
