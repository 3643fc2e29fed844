"""``backend: auto`` falls back to ONNX Runtime when the TensorRT backend fails to start,
not only when no engine fits; ``backend: tensorrt`` stops with the one line.

The package carries an engine plan whose manifest fits the fake machine (an NVIDIA L4
with TensorRT 10.16), so ``select_engine`` picks it; the fake TensorRT's ``Runtime`` then
raises pybind11's ``factory function returned nullptr`` TypeError, as TensorRT does when
CUDA cannot start in it (a CUDA 13 wheel on a driver older than r580). In process, the
fakes go into ``sys.modules``; for the real line (``lineside run``, spawned workers) they
are importable ``tensorrt`` and ``pycuda`` packages on PYTHONPATH that load
tests/converter/fake_trt.py.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from converter.engine.manifest import manifest_path
from converter.package import ModelPackage, sha256_file
from tests.conftest import MODEL_SIZE
from tests.converter import fake_trt
from tests.converter.test_engine_plain import L4, _engine_manifest
from tests.edge.daemon import ROOT, finish, line_config, readyz, start_line, synthetic_camera

PROFILE = ((1, MODEL_SIZE, MODEL_SIZE, 1), (4, MODEL_SIZE, MODEL_SIZE, 1), (4, MODEL_SIZE, MODEL_SIZE, 1))


@pytest.fixture
def package(line_package: Path, tmp_path: Path) -> Path:
    """A copy of the session's line package with an engine built (on paper) for the fake L4."""
    copy = tmp_path / "package"
    shutil.copytree(line_package, copy)
    pkg = ModelPackage.open(copy)
    manifest = _engine_manifest(L4, sha256_file(pkg.onnx_path()), "fp32")
    manifest.profiles = [
        {"input": "image", "min": list(PROFILE[0]), "opt": list(PROFILE[1]), "max": list(PROFILE[2])}
    ]
    plan = pkg.engines_dir / manifest.plan_file
    plan.parent.mkdir(exist_ok=True)
    plan.write_bytes(fake_trt.PLAN_BYTES)
    manifest.save(manifest_path(plan))
    return copy


def _fakes(monkeypatch, runtime_error: str | None):
    _, driver, memory = fake_trt.install(
        monkeypatch, profile=PROFILE, compute=lambda x: x * 0, runtime_error=runtime_error
    )
    return driver, memory


def _cfg(package: Path, backend: str):
    from edge.config import parse_config

    return parse_config(
        {
            "model": {"package": str(package), "backend": backend, "threads": 1},
            "cameras": [{"id": "cam"}],
            "workers": {"max_batch": 4},
            "metrics": {"port": 0},
        }
    )


def test_auto_falls_back_when_tensorrt_fails_to_start(package, monkeypatch, caplog):
    from edge.worker import open_worker

    driver, memory = _fakes(monkeypatch, fake_trt.NULLPTR)
    worker = open_worker(_cfg(package, "auto"), "w-fallback")
    try:
        assert worker.backend.name == "onnxruntime"
        assert worker.backend_note.startswith("tensorrt unusable, running onnxruntime instead: ")
        assert "factory function returned nullptr" in worker.backend_note and "r580" in worker.backend_note
        header = worker.heartbeat_header()
        assert header["backend_note"] == worker.backend_note
        assert any(r.levelname == "WARNING" and "tensorrt unusable" in r.message for r in caplog.records)
        assert memory == {} and driver.stacks() == ([], [])  # what TensorRT made is freed
        assert worker.backend.input_buffer(1) is None  # ONNX Runtime: the worker's own buffers
    finally:
        worker.close()


def test_auto_says_which_backend_it_chose_and_why(package, monkeypatch):
    """Under auto the choice itself travels in the heartbeat (to /readyz and the status), not
    only in the worker's log; a backend named in the config needs no note."""
    from edge.worker import open_worker

    _fakes(monkeypatch, None)  # TensorRT starts: the fitting engine is chosen
    worker = open_worker(_cfg(package, "auto"), "w-auto")
    try:
        assert worker.backend.name == "tensorrt"
        assert worker.backend_note.startswith("auto: tensorrt: ") and "NVIDIA L4" in worker.backend_note
        assert worker.heartbeat_header()["backend_note"] == worker.backend_note
    finally:
        worker.close()
    named = open_worker(_cfg(package, "onnxruntime"), "w-ort")
    try:
        assert named.backend.name == "onnxruntime" and named.backend_note == ""
    finally:
        named.close()


def test_tensorrt_asked_for_stops_with_the_one_line(package, monkeypatch):
    from edge.worker import ModelLoadError, open_worker

    _fakes(monkeypatch, fake_trt.NULLPTR)
    with pytest.raises(ModelLoadError) as info:
        open_worker(_cfg(package, "tensorrt"), "w-trt")
    message = str(info.value)
    assert "\n" not in message and message.startswith("TensorRT could not create its Runtime")


def test_a_working_engine_gets_the_pinned_input(package, monkeypatch):
    """With TensorRT starting, auto runs it, and the worker normalizes into the engine's
    pinned input view (no pageable copy first)."""
    from edge.worker import open_worker

    driver, memory = _fakes(monkeypatch, None)
    worker = open_worker(_cfg(package, "auto"), "w-trt")
    try:
        assert worker.backend.name == "tensorrt" and worker.backend_note.startswith("auto: tensorrt")
        item = type("Item", (), {})()
        item.image = np.full((MODEL_SIZE, MODEL_SIZE), 255, np.uint8)
        item.header = {"cam": "cam", "seq": 0, "epoch": 0, "tag": ""}
        worker.batch = [item]
        prepared = worker.prepare(results=None)
        assert np.shares_memory(prepared.inputs, worker.backend.input_buffer(1, 0))
        probs = worker.on_backend_thread(worker.infer, prepared)
        assert probs.shape == (1, MODEL_SIZE, MODEL_SIZE) and not probs.any()  # the fake's engine: x * 0
        assert np.shares_memory(driver.htod_sources[-1], prepared.inputs)
    finally:
        worker.close()
    assert memory == {} and driver.stacks() == ([], [])


# -- the real line ---------------------------------------------------------------------------

FAKE_GPU = """
from tests.converter import fake_trt

pycuda, driver, memory = fake_trt.make_pycuda()
trt = fake_trt.make_tensorrt(memory, profile={profile!r}, runtime_error=fake_trt.NULLPTR)
"""
FAKE_TENSORRT = """
import sys
import _lineside_fake_gpu

sys.modules[__name__] = _lineside_fake_gpu.trt
"""
FAKE_PYCUDA = """
import sys
import _lineside_fake_gpu

sys.modules["pycuda.driver"] = _lineside_fake_gpu.driver
sys.modules[__name__] = _lineside_fake_gpu.pycuda
"""


def _fake_gpu_path(root: Path) -> Path:
    """A folder that makes ``import tensorrt`` and ``import pycuda.driver`` load the fakes."""
    (root / "tensorrt").mkdir(parents=True)
    (root / "pycuda").mkdir()
    (root / "_lineside_fake_gpu.py").write_text(textwrap.dedent(FAKE_GPU.format(profile=PROFILE)))
    (root / "tensorrt" / "__init__.py").write_text(textwrap.dedent(FAKE_TENSORRT))
    (root / "pycuda" / "__init__.py").write_text(textwrap.dedent(FAKE_PYCUDA))
    return root


@pytest.mark.slow
def test_a_line_on_auto_runs_onnxruntime_and_says_why(package, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{_fake_gpu_path(tmp_path / 'fakegpu')}:{ROOT}")
    cfg = line_config(tmp_path, package, [synthetic_camera("cam", size=MODEL_SIZE, fps=4)])
    cfg["model"]["backend"] = "auto"
    daemon, sub = start_line(tmp_path, cfg, duration=10)
    try:
        port = cfg["metrics"]["port"]
        assert sub.wait_for(lambda s: any(st.get("backend_notes") for st in s.statuses), 30), daemon.output()
        # ready once the camera delivers (the notes do not make it unready)
        assert sub.wait_for(lambda s: readyz(port)["ready"], 20), readyz(port)
        ready = readyz(port)
        status = next(st for st in sub.statuses if st.get("backend_notes"))
    finally:
        code = finish(daemon, sub)
    assert code == 0, daemon.output()
    (note,) = status["backend_notes"].values()
    assert note.startswith(
        "tensorrt unusable, running onnxruntime instead: TensorRT could not create its Runtime"
    )
    assert ready["ready"] is True, ready  # the line decides, on ONNX Runtime
    assert len(ready["notes"]) == 1 and note in ready["notes"][0], ready
    assert set(daemon.summary()["backends"]) == {"onnxruntime"}
    assert "tensorrt unusable, running onnxruntime instead" in daemon.output()
    assert "Traceback" not in daemon.output()
