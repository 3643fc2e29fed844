"""The dependency rules of docs/architecture.md, checked in a fresh interpreter:
edge and converter import without TensorFlow or TensorRT (nor the plant sinks' paho-mqtt and
asyncua, loaded only by a sink that is enabled), and `lineside --help` is light."""

from __future__ import annotations

import ast
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


#: docs/architecture.md's table: the other top-level packages each one may import
MAY_IMPORT = {"training": {"converter"}, "converter": set(), "edge": {"converter"}}
#: the two places in edge that reach into training on purpose, outside the line (docs/architecture.md)
EDGE_INTO_TRAINING = {"edge/cli.py", "edge/config_docs.py"}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages among edge, converter and training that ``path`` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(MAY_IMPORT)


def test_each_package_imports_only_what_the_architecture_allows() -> None:
    wrong = []
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            extra = imported_packages(path) - allowed - {package}
            if rel in EDGE_INTO_TRAINING:
                extra -= {"training"}
            wrong += [f"{rel} imports {name}" for name in sorted(extra)]
    assert not wrong, wrong
