"""The converter's subcommands as a user runs them, through ``lineside``'s own ``main``: one-line
errors, exit 2, no traceback."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from edge.cli import main

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_imports_stay_light():
    modules = (
        "converter, converter.cli, converter.engine, converter.engine.build, converter.engine.runtime, "
        "converter.engine.verify, converter.inspect, converter.export, converter.variants, "
        "edge.backends.trt"
    )
    code = (
        f"import sys, {modules}\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tensorrt', 'pycuda', 'onnxruntime', 'onnx', 'tf2onnx') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_export_cli(tmp_path, trained_checkpoint, dataset, capsys):
    out = tmp_path / "pkg"
    assert main(["export", str(trained_checkpoint), "--out", str(out), "--data", str(dataset), "--fold"]) == 0
    printed = capsys.readouterr().out
    assert "fp32=model.onnx" in printed and "uint8=model.uint8.onnx" in printed
    assert main(["export", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lineside: error: ") and "nope" in err[0]


def test_inspect_cli(fp32_package, capsys):
    assert main(["inspect", str(fp32_package.root)]) == 0
    text = capsys.readouterr().out
    assert '"model_id": "tiny"' in text
    assert "fp32  model.onnx" in text and "image float32['" in text and "probability float32" in text
    assert "engines:\n  (none)" in text
    assert "engine for this machine: none (ONNX Runtime CPU)" in text


def test_inspect_not_a_package(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no manifest" in capsys.readouterr().err


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_is_one_line(fp32_package, capsys):
    assert main(["build-engine", str(fp32_package.root), "--precision", "fp32", "--batch", "1,2,4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT is not installed" in err[0] and "'.[gpu-cu12]'" in err[0]


def test_build_engine_argument_errors(fp32_package, capsys):
    assert main(["build-engine", str(fp32_package.root), "--batch", "8,4,1"]) == 2
    assert "min <= opt <= max" in capsys.readouterr().err
    assert main(["build-engine", str(fp32_package.root), "--workspace", "lots"]) == 2
    assert main(["build-engine", str(fp32_package.root), "--precision", "fp16"]) == 2
    assert "--precision fp16" in capsys.readouterr().err
