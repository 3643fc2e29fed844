"""A model package whose graph is not the one its manifest describes never runs.

`lineside run` refuses it before any process starts (one line, exit 2): a graph whose
input size disagrees with the manifest, and a graph changed after export (its sha256 is
not the manifest's). A graph that changes while the line runs is caught by the next
worker that loads it: that worker is not restarted, the line stops with one line and
exit 2, never a crash loop that drops every frame and exits 0.

Real package (the untrained ``line_package``, copied), real graphs (onnx.helper), the real daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from converter.manifest import ModelManifest
from converter.package import sha256_file
from tests.conftest import MODEL_SIZE
from tests.converter.graphs import write_graph
from tests.edge.daemon import ROOT, finish, line_config, one_error_line, start_line, synthetic_camera

pytestmark = pytest.mark.slow

SMALL = MODEL_SIZE // 2


@pytest.fixture
def package(line_package: Path, tmp_path: Path) -> Path:
    """A private copy of the session's line package, written with graph hashes as `lineside export` writes."""
    copy = tmp_path / "package"
    shutil.copytree(line_package, copy)
    assert ModelManifest.load(copy).files_sha256, "tests/packages.py must record the graph's sha256"
    return copy


def swap_graph(package: Path, size: int, *, record: bool) -> Path:
    """Replace model.onnx by a graph taking ``size``x``size`` images; ``record`` writes its
    sha256 into the manifest (the graph and the manifest then disagree only in the I/O)."""
    graph = package / "model.onnx"
    tmp = write_graph(package / "swap.tmp", in_shape=["batch", size, size, 1])
    os.replace(tmp, graph)
    if record:
        manifest = ModelManifest.load(package)
        manifest.record_file("fp32", "model.onnx", sha256_file(graph))
        manifest.save(package)
    return graph


def run_line(tmp_path: Path, package: Path) -> subprocess.CompletedProcess:
    cfg = line_config(tmp_path, package, [synthetic_camera("cam", size=MODEL_SIZE)])
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(cfg))
    argv = [sys.executable, "-m", "edge.cli", "run", "--config", str(path), "--duration", "30"]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_graph_of_another_size_is_refused_before_the_line_starts(package: Path, tmp_path: Path) -> None:
    graph = swap_graph(package, SMALL, record=True)
    line = one_error_line(run_line(tmp_path, package))
    assert f"{graph} does not match manifest.json: " in line
    assert f"input height: graph {SMALL}, manifest {MODEL_SIZE}" in line
    assert f"input width: graph {SMALL}, manifest {MODEL_SIZE}" in line
    assert line.endswith("re-run `lineside export`")


def test_a_manifest_edited_to_another_size_is_refused(package: Path, tmp_path: Path) -> None:
    manifest = ModelManifest.load(package)
    manifest.input.height = manifest.input.width = 96
    manifest.save(package)
    line = one_error_line(run_line(tmp_path, package))
    assert f"input height: graph {MODEL_SIZE}, manifest 96" in line


def test_a_graph_changed_after_export_is_refused(package: Path, tmp_path: Path) -> None:
    graph = package / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 1  # one bit of a weight (they fill the file): same graph, same I/O
    graph.write_bytes(bytes(data))
    line = one_error_line(run_line(tmp_path, package))
    assert line == (
        f"lineside: error: {graph}: sha256 does not match manifest.json (file changed after export); "
        "re-run `lineside export`"
    )


def test_a_worker_that_cannot_load_the_model_stops_the_line(package: Path, tmp_path: Path) -> None:
    """The graph is swapped while the line runs, then the worker is killed: its restart finds
    the swapped graph, exits with the model-load code, and the line stops (no crash loop)."""
    cfg = line_config(tmp_path, package, [synthetic_camera("cam", size=MODEL_SIZE, fps=8)])
    daemon, sub = start_line(tmp_path, cfg)
    try:
        assert sub.wait_for(lambda s: len(s.results) >= 5 and s.statuses, 90), daemon.output()
        graph = swap_graph(package, SMALL, record=False)
        pid = sub.pids("worker:0")["worker:0"]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        code = finish(daemon, sub, timeout=60)
    finally:
        daemon.kill()
    took = time.monotonic() - killed
    out = daemon.output()
    print(f"exit {code} {took:.1f} s after the kill")
    assert code == 2, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("lineside: error: ")]
    assert errors == [
        f"lineside: error: worker:0: {graph}: sha256 does not match manifest.json (file changed after "
        "export); re-run `lineside export` (the line stopped: a restarted worker would fail the same way)"
    ], out
    assert out.count("sha256 does not match") == 1, out  # said once, not once per restart
    assert out.count("worker:0 exited") == 1, out  # restarted after the kill, never after the load failure
    assert daemon.summary()["restarts"] == {"worker:0": 1}
    assert took < 30, out
