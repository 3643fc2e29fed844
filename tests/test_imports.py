"""The dependency rules of docs/architecture.md, checked in a fresh interpreter:
edge and converter import without TensorFlow or TensorRT (nor the plant sinks' paho-mqtt and
asyncua, loaded only by a sink that is enabled), and `lineside --help` is light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MODULES = [
    "edge.cli",
    "edge.commands",
    "edge.supervisor",
    "edge.camera",
    "edge.router",
    "edge.worker",
    "edge.collector",
    "edge.sinks.feed",
    "edge.sinks.mqtt",
    "edge.sinks.opcua",
    "edge.bench",
    "edge.backends.onnxrt",
    "edge.backends.trt",
    "edge.backends.openvino",
    "edge.backends.choice",
    "converter.cli",
    "converter.export",
    "converter.package",
    "converter.engine.select",
    "converter.openvino_runtime",
    "converter.backend_gate",
    "training.cli",
]


def test_line_side_modules_import_without_tensorflow_or_tensorrt() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = ('tensorflow', 'keras', 'tensorrt', 'pycuda', 'tf2onnx', 'paho', 'asyncua', 'openvino')\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at module level: {out.stdout.strip()}"


def test_help_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for command in (
        "synth",
        "train",
        "eval",
        "export",
        "build-engine",
        "inspect",
        "gate",
        "run",
        "worker",
        "bench",
        "demo",
    ):
        assert command in out.stdout, command
