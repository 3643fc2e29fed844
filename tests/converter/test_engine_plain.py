"""Engine profiles, manifests, selection and error paths: plain Python, no TensorRT needed."""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace

import pytest

from converter.engine.manifest import (
    EngineManifest,
    EngineManifestError,
    EngineMismatchError,
    MachineInfo,
    check_compatible,
    load_engine_manifest,
    manifest_path,
    mismatches,
    plan_name,
)
from converter.engine.profiles import BatchProfile, ProfileError, parse_batch_profile, parse_size, plan_chunks
from converter.engine.select import select_engine
from converter.errors import LinesideError
from converter.package import ModelPackage, sha256_file

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
L4 = MachineInfo("10.16.1.11", "12.9", "12.9", "NVIDIA L4", "8.9")
ORIN = MachineInfo("10.3.0.30", "12.6", "12.6", "Orin", "8.7")


def test_batch_profile_parsing_and_shapes():
    assert parse_batch_profile("1,4,8") == BatchProfile(1, 4, 8)
    assert parse_batch_profile("6") == BatchProfile(1, 6, 6)
    for bad in ("8,4,1", "0,1,2", "1,2", "a,b,c"):
        with pytest.raises(ProfileError, match=r"--batch|min <= opt <= max"):
            parse_batch_profile(bad)
    shapes = BatchProfile(1, 4, 8).shapes(512, 256, 1)
    assert shapes == {"min": (1, 512, 256, 1), "opt": (4, 512, 256, 1), "max": (8, 512, 256, 1)}
    assert BatchProfile(2, 2, 2).shapes(5, 6, 3, "NCHW")["max"] == (2, 3, 5, 6)


def test_sizes():
    assert parse_size("2GiB") == 2 << 30
    assert parse_size("512 MiB") == 512 << 20
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("4096") == 4096
    for bad in ("lots", "2XB", "0"):
        with pytest.raises(ProfileError):
            parse_size(bad)


def test_chunk_planning_pads_and_splits():
    profile = BatchProfile(2, 4, 4)
    assert plan_chunks(0, profile) == []
    (one,) = plan_chunks(1, profile)
    assert (one.start, one.count, one.run_batch) == (0, 1, 2)  # padded up to min
    chunks = plan_chunks(10, profile)
    assert [(c.start, c.count, c.run_batch) for c in chunks] == [(0, 4, 4), (4, 4, 4), (8, 2, 2)]
    assert sum(c.count for c in chunks) == 10 and all(
        profile.min <= c.run_batch <= profile.max for c in chunks
    )


def _engine_manifest(machine: MachineInfo, onnx_sha: str, precision: str = "fp16") -> EngineManifest:
    return EngineManifest(
        plan_file=plan_name(machine, precision),
        model_id="tiny",
        precision=precision,
        builder_flag_fp16=False,
        strongly_typed=True,
        onnx_file="model.onnx",
        onnx_sha256=onnx_sha,
        input_name="image",
        profiles=[{"input": "image", "min": [1, 64, 64, 1], "opt": [4, 64, 64, 1], "max": [8, 64, 64, 1]}],
        tensorrt_version=machine.tensorrt_version,
        cuda_toolkit_version=machine.cuda_toolkit_version,
        cuda_driver_api_version=machine.cuda_driver_api_version,
        gpu_name=machine.gpu_name,
        compute_capability=machine.compute_capability,
        workspace_bytes=1 << 30,
        build_seconds=42.0,
    )


def _add_engine(package: ModelPackage, machine: MachineInfo, precision: str = "fp16", sha: str | None = None):
    sha = sha or sha256_file(package.onnx_path())
    manifest = _engine_manifest(machine, sha, precision)
    plan = package.engines_dir / manifest.plan_file
    plan.parent.mkdir(exist_ok=True)
    plan.write_bytes(b"not a real plan")
    manifest.save(manifest_path(plan))
    return plan


def test_engine_manifest_round_trip_and_errors(tmp_path):
    plan = tmp_path / plan_name(L4, "fp16")
    assert plan.name == "nvidia-l4-sm89-trt10.16.1.11-fp16.plan"
    manifest = _engine_manifest(L4, "ab" * 32)
    manifest.save(manifest_path(plan))
    assert load_engine_manifest(plan) == manifest and manifest.max_batch == 8
    data = manifest.to_dict()
    for edit, message in [
        (lambda d: d.pop("gpu_name"), "missing key 'gpu_name'"),
        (lambda d: d.update(extra=1), "unknown key 'extra'"),
        (lambda d: d.update(schema_version=7), "schema_version 7"),
        (lambda d: d.update(profiles=[]), r"profiles is \[\]; must list"),
        (lambda d: d.update(workspace_bytes="1"), "workspace_bytes must be int"),
    ]:
        broken = json.loads(json.dumps(data))
        edit(broken)
        manifest_path(plan).write_text(json.dumps(broken))
        with pytest.raises(EngineManifestError, match=message):
            load_engine_manifest(plan)
    manifest_path(plan).write_text("[1,")
    with pytest.raises(EngineManifestError, match="not valid JSON"):
        load_engine_manifest(plan)
    manifest_path(plan).unlink()
    with pytest.raises(EngineManifestError, match="no engine manifest"):
        load_engine_manifest(plan)


def test_mismatch_is_refused_naming_both_sides(tmp_path):
    manifest = _engine_manifest(L4, "ab" * 32)
    assert mismatches(manifest, L4, "ab" * 32) == []
    reasons = mismatches(manifest, ORIN, "cd" * 32)
    assert len(reasons) == 3
    assert "NVIDIA L4 (sm 8.9)" in reasons[0] and "Orin (sm 8.7)" in reasons[0]
    assert "10.16.1.11" in reasons[1] and "10.3.0.30" in reasons[1]
    with pytest.raises(EngineMismatchError) as info:
        check_compatible(manifest, replace(L4, tensorrt_version="11.4.0.106"), tmp_path / "x.plan")
    assert "TensorRT: engine built with 10.16.1.11, this machine has 11.4.0.106" in str(info.value)
    assert "lineside build-engine" in str(info.value)
    # same GPU name but another compute capability (a MIG slice or a renamed board) is refused too
    assert mismatches(manifest, replace(L4, compute_capability="9.0"))


def test_select_engine(package_copy):
    package = package_copy
    plan, reason = select_engine(package, machine=L4)
    assert plan is None and "no TensorRT engine" in reason and "build-engine" in reason
    orin_plan = _add_engine(package, ORIN)
    plan, reason = select_engine(package, machine=L4)
    assert plan is None and "Orin" in reason and "NVIDIA L4" in reason
    fp32_plan = _add_engine(package, L4, "fp32")
    plan, reason = select_engine(package, machine=L4)
    assert plan == fp32_plan and "NVIDIA L4" in reason
    fp16_plan = _add_engine(package, L4, "fp16")
    assert select_engine(package, machine=L4)[0] == fp16_plan  # fp16 preferred
    assert select_engine(package, machine=ORIN)[0] == orin_plan
    # an engine built from an older export of the graph is stale
    package.onnx_path().write_bytes(package.onnx_path().read_bytes() + b" ")
    plan, reason = select_engine(package, machine=L4)
    assert plan is None and "re-exported" in reason


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here; this checks the machine without it")
def test_select_engine_without_tensorrt(package_copy):
    _add_engine(package_copy, L4)
    plan, reason = select_engine(package_copy)
    assert plan is None and "no TensorRT on this machine" in reason and "gpu-cu12" in reason


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_backend_without_tensorrt_says_what_to_install(package_copy):
    from edge.backends.base import BackendError
    from edge.backends.trt import TensorRTBackend

    plan = _add_engine(package_copy, L4)
    backend = TensorRTBackend.for_package(package_copy, plan)
    with pytest.raises(BackendError, match=r"TensorRT is not installed.*pip install -e '\.\[gpu-cu12\]'"):
        backend.activate()
    assert not backend.is_active


def test_backend_refuses_mismatch_before_deserializing(package_copy, monkeypatch):
    """The manifest check runs before TensorRT sees the plan: a mismatch never reaches deserialize."""
    from converter.engine import runtime
    from edge.backends.base import BackendError
    from edge.backends.trt import TensorRTBackend

    plan = _add_engine(package_copy, ORIN)
    calls = []
    monkeypatch.setattr(runtime, "import_tensorrt", lambda: calls.append("trt"))
    monkeypatch.setattr(runtime, "import_pycuda", lambda: calls.append("pycuda"))
    monkeypatch.setattr(runtime, "probe_machine", lambda device: L4)

    def no_context(*args, **kwargs):
        raise AssertionError("a mismatched engine reached CUDA/deserialization")

    monkeypatch.setattr(runtime, "DeviceContext", no_context)
    with pytest.raises(BackendError) as info:
        TensorRTBackend.for_package(package_copy, plan).activate()
    message = str(info.value)
    assert "refusing to load" in message and "Orin" in message and "NVIDIA L4" in message
    assert "10.3.0.30" in message and "10.16.1.11" in message
    assert calls == ["trt", "pycuda"]


def test_backend_refuses_plan_without_manifest(tmp_path):
    from edge.backends.base import BackendError
    from edge.backends.trt import TensorRTBackend

    plan = tmp_path / "x.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(BackendError, match="no engine manifest"):
        TensorRTBackend(plan).activate()
    with pytest.raises(BackendError, match="not found"):
        TensorRTBackend(tmp_path / "missing.plan").activate()


def test_build_engine_error_paths(package_copy):
    from converter.engine.build import EngineBuildError, build_engine_for_package, pick_graph

    with pytest.raises(EngineBuildError, match="--precision fp16"):
        pick_graph(package_copy, "fp16", builder_flag_fp16=False)
    with pytest.raises(EngineBuildError, match="cannot make a int8 engine"):
        pick_graph(package_copy, "int8", builder_flag_fp16=True)
    assert pick_graph(package_copy, "fp16", builder_flag_fp16=True) == package_copy.onnx_path("fp32")
    if not HAS_TRT:
        with pytest.raises(LinesideError, match="TensorRT is not installed"):
            build_engine_for_package(package_copy.root, precision="fp32")


def test_package_copy_is_independent(package_copy, fp32_package):
    shutil.rmtree(package_copy.root / "engines", ignore_errors=True)
    assert fp32_package.root != package_copy.root
