"""The engine runner's control flow against fake tensorrt/pycuda modules (see fake_trt.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from converter.engine.manifest import EngineManifestError, manifest_path
from tests.converter import fake_trt
from tests.converter.test_engine_plain import L4, ORIN, _engine_manifest


@pytest.fixture
def fakes(monkeypatch):
    pycuda, driver, memory = fake_trt.make_pycuda()
    trt = fake_trt.make_tensorrt(memory)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt, driver, memory


def _plan(tmp_path, machine, data=fake_trt.PLAN_BYTES):
    plan = tmp_path / "engine.plan"
    plan.write_bytes(data)
    _engine_manifest(machine, "ab" * 32).save(manifest_path(plan))
    return plan


def test_probe_reads_the_machine(fakes):
    from converter.engine.machine import probe_machine

    machine = probe_machine()
    assert (machine.gpu_name, machine.compute_capability) == (L4.gpu_name, L4.compute_capability)
    assert (machine.tensorrt_version, machine.cuda_driver_api_version, machine.cuda_toolkit_version) == (
        "10.16.1.11",
        "12.9",
        "12.9.0",
    )


def test_runner_chunks_pads_and_frees(fakes, tmp_path):
    from edge.backends.trt.runner import TensorRTBackend

    trt, driver, memory = fakes
    backend = TensorRTBackend(_plan(tmp_path, L4), onnx_sha256="ab" * 32)
    with backend:
        assert backend.max_batch == 4 and len(memory) == 2  # one device buffer per I/O tensor
        x = np.random.default_rng(0).random((7, 8, 8, 1), dtype=np.float32)
        out = backend.infer(x)
        np.testing.assert_array_equal(out, 2 * x[..., 0])
        assert trt.executions == [4, 3]  # 7 = 4 + 3, each within the profile
        trt.executions.clear()
        np.testing.assert_array_equal(backend.infer(x[:1]), 2 * x[:1, ..., 0])
        assert trt.executions == [2]  # padded up to the profile's min batch
        assert "NVIDIA L4" in backend.describe()
    assert memory == {} and driver.PrimaryContext.pushed == 0  # device memory freed, contexts popped
    backend.free()  # idempotent


def test_runner_refuses_before_deserializing(fakes, tmp_path):
    from edge.backends.base import BackendError
    from edge.backends.trt.runner import TensorRTBackend

    trt, _, memory = fakes
    with pytest.raises(BackendError, match=r"Orin \(sm 8\.7\).*NVIDIA L4 \(sm 8\.9\)"):
        TensorRTBackend(_plan(tmp_path, ORIN)).activate()
    assert trt.deserialized is False and memory == {}
    with pytest.raises(BackendError, match="re-exported"):
        TensorRTBackend(_plan(tmp_path, L4), onnx_sha256="cd" * 32).activate()
    assert trt.deserialized is False


def test_runner_refuses_a_plan_changed_after_its_build(fakes, tmp_path):
    """A plan whose bytes are not the ones its manifest recorded never reaches TensorRT
    (deserializing a foreign plan can crash the process)."""
    from converter.package import sha256_file
    from edge.backends.base import BackendError
    from edge.backends.trt.runner import TensorRTBackend

    trt, _, memory = fakes
    plan = _plan(tmp_path, L4)
    manifest = _engine_manifest(L4, "ab" * 32)
    manifest.plan_sha256 = sha256_file(plan)
    manifest.save(manifest_path(plan))
    with TensorRTBackend(plan, onnx_sha256="ab" * 32) as backend:  # the plan as built loads
        assert backend.max_batch == 4
    trt.deserialized = False
    plan.write_bytes(fake_trt.PLAN_BYTES + b"\0")
    with pytest.raises(BackendError) as info:
        TensorRTBackend(plan, onnx_sha256="ab" * 32).activate()
    assert str(info.value) == (
        f"{plan}: sha256 does not match engine.plan.json (plan changed after it was built); "
        "rebuild it with `lineside build-engine PACKAGE`"
    )
    assert trt.deserialized is False and memory == {}


def test_runner_reports_a_plan_tensorrt_rejects(fakes, tmp_path):
    from edge.backends.base import BackendError
    from edge.backends.trt.runner import TensorRTBackend

    _, driver, memory = fakes
    with pytest.raises(BackendError, match="could not deserialize"):
        TensorRTBackend(_plan(tmp_path, L4, data=b"corrupt")).activate()
    assert memory == {} and driver.PrimaryContext.pushed == 0


def test_runner_rejects_a_wrong_image_shape(fakes, tmp_path):
    from edge.backends.base import BackendError
    from edge.backends.trt.runner import TensorRTBackend

    with TensorRTBackend(_plan(tmp_path, L4)) as backend, pytest.raises(BackendError, match="image shape"):
        backend.infer(np.zeros((2, 16, 16, 1), np.float32))


def test_manifest_is_required(fakes, tmp_path):
    from converter.engine.runtime import EngineRunner

    plan = tmp_path / "bare.plan"
    plan.write_bytes(fake_trt.PLAN_BYTES)
    with pytest.raises(EngineManifestError, match="no engine manifest"):
        EngineRunner(plan).load()


def test_build_steps(fakes, package_copy, tmp_path, capsys):
    from converter.engine.build import build_engine_for_package
    from converter.engine.manifest import load_engine_manifest
    from converter.engine.profiles import BatchProfile
    from converter.package import sha256_file
    from edge.backends.trt.runner import TensorRTBackend

    trt, _, _ = fakes
    seen = fake_trt.add_builder(trt)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    result = build_engine_for_package(
        package_copy.root,
        precision="fp32",
        batch=BatchProfile(2, 4, 4),
        workspace_bytes=1 << 28,
        timing_cache=cache,
    )
    assert seen["network_flags"] == 1 << 5 and seen["flags"] == []  # strongly typed, no precision flags
    assert seen["shapes"] == ("image", (2, 64, 64, 1), (4, 64, 64, 1), (4, 64, 64, 1))
    assert seen["workspace"] == 1 << 28 and seen["cache_in"] == b"old"
    assert cache.read_bytes() == b"built,old"  # written back
    assert result.plan_path == package_copy.engines_dir / "nvidia-l4-sm89-trt10.16.1.11-b4-fp32.plan"
    assert result.plan_path.read_bytes() == fake_trt.PLAN_BYTES
    manifest = load_engine_manifest(result.plan_path)
    assert manifest.onnx_sha256 == sha256_file(package_copy.onnx_path()) and manifest.strongly_typed
    assert manifest.plan_sha256 == sha256_file(result.plan_path)
    assert (manifest.gpu_name, manifest.compute_capability, manifest.tensorrt_version) == (
        "NVIDIA L4",
        "8.9",
        "10.16.1.11",
    )
    assert "Building engine (2 steps)" in capsys.readouterr().err  # progress is shown
    # the engine it wrote is the one chosen, and loads
    from converter.engine.select import select_engine

    assert select_engine(package_copy)[0] == result.plan_path
    with TensorRTBackend.for_package(package_copy, result.plan_path) as backend:
        assert backend.max_batch == 4


def test_builder_flag_fp16_path(fakes, package_copy):
    from converter.engine.build import EngineBuildError, build_engine_for_package

    trt, _, _ = fakes
    seen = fake_trt.add_builder(trt)
    result = build_engine_for_package(package_copy.root, precision="fp16", builder_flag_fp16=True)
    assert seen["network_flags"] == 0 and seen["flags"] == [trt.BuilderFlag.FP16]
    assert seen["parsed"].endswith("model.onnx") and not result.manifest.strongly_typed
    # TensorRT 11 has no BuilderFlag.FP16: the path is refused with the alternative named
    fake_trt.add_builder(trt, has_fp16_flag=False)
    with pytest.raises(EngineBuildError, match="removed in 11"):
        build_engine_for_package(package_copy.root, precision="fp16", builder_flag_fp16=True)


def test_parser_errors_are_one_line(fakes, package_copy):
    from converter.engine.build import EngineBuildError, build_engine_for_package

    trt, _, _ = fakes
    fake_trt.add_builder(trt, parse_ok=False)
    with pytest.raises(EngineBuildError, match=r"ONNX parser failed: conv7 \(Conv\): unsupported op"):
        build_engine_for_package(package_copy.root, precision="fp32")


def test_verify_reports_dice_and_agreement(monkeypatch, package_copy, dataset, capsys):
    """build-engine --verify end to end, with an 'engine' that runs the FP32 graph in ONNX Runtime."""
    from converter import onnx_graph
    from tests.converter.test_cli import run

    session = onnx_graph.session(package_copy.onnx_path())
    pycuda, driver, memory = fake_trt.make_pycuda()
    shape = (64, 64, 1)
    trt = fake_trt.make_tensorrt(
        memory,
        profile=((1, *shape), (4, *shape), (8, *shape)),
        compute=lambda x: session.run(None, {"image": x})[0],
    )
    fake_trt.add_builder(trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    argv = ["build-engine", str(package_copy.root), "--precision", "fp32", "--verify", "--data", str(dataset)]
    argv += ["--verify-samples", "10"]
    code = run(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "TensorRT fp32 engine vs ONNX Runtime FP32 gate PASS: mask Dice 1.0000" in out
    assert "pass/fail agreement 100.00% on 10 images" in out
    assert trt.executions == [8, 2]  # 10 images in profile-sized chunks
    # an engine that gives other answers fails --verify with exit 1
    trt.executions.clear()
    broken = fake_trt.make_tensorrt(
        memory, profile=((1, *shape), (4, *shape), (8, *shape)), compute=lambda x: x * 0
    )
    fake_trt.add_builder(broken)
    monkeypatch.setitem(sys.modules, "tensorrt", broken)
    code = run(argv)
    assert code == 1 and "gate FAIL" in capsys.readouterr().out
