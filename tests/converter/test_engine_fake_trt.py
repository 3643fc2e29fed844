"""The engine runner's control flow against fake tensorrt/pycuda modules (see fake_trt.py)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from converter.engine.manifest import EngineManifestError, manifest_path
from tests.converter import fake_trt
from tests.converter.test_engine_plain import L4, ORIN, _engine_manifest


@pytest.fixture
def fakes(monkeypatch):
    return fake_trt.install(monkeypatch)


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
    from edge.backends.trt import TensorRTBackend

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
    assert memory == {} and driver.stacks() == ([], [])  # device memory freed, contexts popped
    backend.free()  # idempotent


def test_runner_refuses_before_deserializing(fakes, tmp_path):
    from edge.backends.base import BackendError
    from edge.backends.trt import TensorRTBackend

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
    from edge.backends.trt import TensorRTBackend

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
    from edge.backends.trt import TensorRTBackend

    _, driver, memory = fakes
    with pytest.raises(BackendError, match="could not deserialize"):
        TensorRTBackend(_plan(tmp_path, L4, data=b"corrupt")).activate()
    assert memory == {} and driver.stacks() == ([], [])


def test_runner_rejects_a_wrong_image_shape(fakes, tmp_path):
    from edge.backends.base import BackendError
    from edge.backends.trt import TensorRTBackend

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
    from edge.backends.trt import TensorRTBackend

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
    from edge.cli import main as run

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


# -- the CUDA context stack (pycuda's detach of a primary context never pops) -------------


def _load_free_load_infer_free(plan) -> np.ndarray:
    from edge.backends.trt import TensorRTBackend

    backend = TensorRTBackend(plan, onnx_sha256="ab" * 32)
    backend.activate()
    backend.free()
    backend = TensorRTBackend(plan, onnx_sha256="ab" * 32)
    with backend:
        out = backend.infer(np.ones((3, 8, 8, 1), np.float32)).copy()
    return out


def test_free_then_reload_leaves_the_context_stack_empty(fakes, tmp_path):
    """load -> free -> load -> infer -> free, on this thread and on another: each thread's
    context stacks (pycuda's and CUDA's) are empty after, and the primary context is retained
    once for the process, not once more per load (it was released by a detach that left it
    current on the thread's stack)."""
    _, driver, memory = fakes
    plan = _plan(tmp_path, L4)
    np.testing.assert_array_equal(_load_free_load_infer_free(plan), np.full((3, 8, 8), 2, np.float32))
    assert driver.stacks() == ([], []) and memory == {}
    seen: dict = {}

    def on_another_thread() -> None:
        try:
            seen["out"] = _load_free_load_infer_free(plan)
            seen["stacks"] = driver.stacks()
        except BaseException as exc:  # reported below, in the test's thread
            seen["error"] = exc

    thread = threading.Thread(target=on_another_thread)
    thread.start()
    thread.join(10)
    assert "error" not in seen, seen.get("error")
    assert seen["stacks"] == ([], []) and driver.stacks() == ([], []) and memory == {}
    np.testing.assert_array_equal(seen["out"], np.full((3, 8, 8), 2, np.float32))
    assert driver.counts["retain"] == 1 and driver.counts["release"] == 0


def test_free_pops_a_context_left_current(fakes, tmp_path):
    """A push without its pop (an exception between them) is popped by free()."""
    from converter.engine.cuda import DeviceContext

    _, driver, _ = fakes
    ctx = DeviceContext(0)
    ctx.__enter__()
    assert len(driver.stacks()[0]) == 1
    ctx.free()
    assert driver.stacks() == ([], [])
    ctx.free()  # idempotent
    with pytest.raises(driver.Error, match="cannot pop"):  # the fake refuses an unbalanced pop
        driver.Context.pop()


# -- TensorRT that cannot start CUDA (pybind11's nullptr TypeError) ------------------------


def test_runtime_nullptr_is_one_line_with_the_driver_hint(monkeypatch, tmp_path):
    from edge.backends.base import BackendError
    from edge.backends.trt import TensorRTBackend

    pycuda, driver, memory = fake_trt.make_pycuda()
    trt = fake_trt.make_tensorrt(memory, runtime_error=fake_trt.NULLPTR)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(BackendError) as info:
        TensorRTBackend(_plan(tmp_path, L4), onnx_sha256="ab" * 32).activate()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("TensorRT could not create its Runtime: CUDA did not start inside TensorRT")
    assert "factory function returned nullptr" in message and "nvidia-smi" in message
    assert "this driver runs CUDA up to 12.9" in message
    assert "r580" in message and "gpu-cu12" in message and "gpu-cu13" in message
    assert memory == {} and driver.stacks() == ([], [])


def test_only_the_nullptr_type_error_is_translated():
    from converter.engine.machine import TensorRTUnavailable, trt_object

    def factory(logger):
        raise TypeError("__init__(): incompatible constructor arguments")

    with pytest.raises(TypeError, match="incompatible"):  # a bug of ours stays a bug
        trt_object("Runtime", factory, None)

    def nullptr(logger):
        raise TypeError(fake_trt.NULLPTR)

    with pytest.raises(TensorRTUnavailable, match="could not create its Builder"):
        trt_object("Builder", nullptr, None)


def test_builder_nullptr_is_one_line(fakes, package_copy):
    from converter.engine.build import build_engine_for_package
    from converter.engine.machine import TensorRTUnavailable

    trt, _, _ = fakes
    fake_trt.add_builder(trt)

    def builder(logger):
        raise TypeError(fake_trt.NULLPTR)

    trt.Builder = builder
    with pytest.raises(TensorRTUnavailable, match=r"could not create its Builder.*nvidia-smi"):
        build_engine_for_package(package_copy.root, precision="fp32")


# -- an import that fails for another reason than "not installed" -------------------------


def _broken_package(root, name: str, error: str) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(f"raise ImportError({error!r})\n")


@pytest.fixture
def no_gpu_modules(monkeypatch, tmp_path):
    for name in ("tensorrt", "pycuda", "pycuda.driver"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_missing_libnvinfer_is_not_reported_as_not_installed(no_gpu_modules):
    from converter.engine.machine import TensorRTUnavailable, import_tensorrt

    _broken_package(no_gpu_modules, "tensorrt", "libnvinfer.so.10: cannot open shared object file")
    with pytest.raises(TensorRTUnavailable) as info:
        import_tensorrt()
    message = str(info.value)
    assert "not installed here" not in message
    assert "TensorRT is installed but cannot load (ImportError: libnvinfer.so.10: cannot open" in message
    assert "libnvinfer.so.10 is missing: TensorRT's own libraries" in message
    assert "LD_LIBRARY_PATH" in message


def test_a_missing_libcuda_names_the_driver(no_gpu_modules):
    from converter.engine.machine import TensorRTUnavailable, import_pycuda

    (no_gpu_modules / "pycuda").mkdir()
    (no_gpu_modules / "pycuda" / "__init__.py").write_text("")
    (no_gpu_modules / "pycuda" / "driver.py").write_text(
        "raise ImportError('libcuda.so.1: cannot open shared object file: No such file or directory')\n"
    )
    with pytest.raises(TensorRTUnavailable) as info:
        import_pycuda()
    message = str(info.value)
    assert "not installed here" not in message
    assert "libcuda.so.1 is missing: the NVIDIA driver is not installed or not on the loader path" in message


def test_a_missing_module_is_not_installed(no_gpu_modules):
    from converter.engine.machine import TensorRTUnavailable, import_tensorrt

    if any((p / "tensorrt").exists() for p in map(__import__("pathlib").Path, sys.path[1:]) if p.is_dir()):
        pytest.skip("TensorRT is installed here")
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT is not installed here \(tensorrt\)"):
        import_tensorrt()


# -- I/O dtypes (finding 7) and the pinned input view (finding 8) --------------------------


def _with_dtypes(monkeypatch, tmp_path, **dtypes):
    pycuda, driver, memory = fake_trt.make_pycuda()
    trt = fake_trt.make_tensorrt(memory, **dtypes)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return _plan(tmp_path, L4), driver, memory


def test_fp16_io_is_cast_on_the_host(monkeypatch, tmp_path):
    """An engine with FP16 input and output gets fp16 values (not float32 bytes read as fp16)
    and returns float32."""
    from edge.backends.trt import TensorRTBackend

    plan, _, _ = _with_dtypes(monkeypatch, tmp_path, input_dtype=np.float16, output_dtype=np.float16)
    x = np.random.default_rng(1).random((3, 8, 8, 1), dtype=np.float32)
    with TensorRTBackend(plan, onnx_sha256="ab" * 32) as backend:
        out = backend.infer(x)
        assert backend.input_buffer(3) is None  # the line's float32 cannot be normalized into fp16
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 2 * x[..., 0], rtol=1e-3)


@pytest.mark.parametrize(
    ("dtypes", "what"),
    [
        ({"input_dtype": np.uint8}, "input 'image' is uint8"),
        ({"input_dtype": np.int8}, "input 'image' is int8"),
        ({"output_dtype": np.uint8}, "output 'probability' is uint8"),
        ({"input_dtype": np.int32}, "input 'image' is int32"),
    ],
)
def test_io_dtypes_the_line_does_not_feed_are_refused_at_load(monkeypatch, tmp_path, dtypes, what):
    from edge.backends.base import BackendError
    from edge.backends.trt import TensorRTBackend

    plan, driver, memory = _with_dtypes(monkeypatch, tmp_path, **dtypes)
    with pytest.raises(BackendError) as info:
        TensorRTBackend(plan, onnx_sha256="ab" * 32).activate()
    assert what in str(info.value) and "not from the folded uint8 graph" in str(info.value)
    assert memory == {} and driver.stacks() == ([], [])


def test_the_pinned_input_view_is_not_copied_and_the_output_is_reused(fakes, tmp_path):
    from edge.backends.trt import TensorRTBackend

    _, driver, _ = fakes
    x = np.random.default_rng(2).random((3, 8, 8, 1), dtype=np.float32)
    with TensorRTBackend(_plan(tmp_path, L4), onnx_sha256="ab" * 32) as backend:
        staging = backend._runner._buffers["image"][0].array
        staging[:] = np.nan  # a host copy would land here
        view = backend.input_buffer(3, 0)
        other = backend.input_buffer(3, 1)
        assert view.shape == (3, 8, 8, 1) and view.dtype == np.float32
        assert not np.shares_memory(view, other)  # one is filled while the other is read
        assert backend.input_buffer(5) is None  # more than the profile's max batch
        view[:] = x
        out = backend.infer(view)
        np.testing.assert_array_equal(out, 2 * x[..., 0])
        assert np.shares_memory(driver.htod_sources[-1], view)  # straight from the view to the GPU
        assert np.isnan(staging).all()  # no host copy
        first = out
        again = backend.infer(x)  # a foreign array: staged, same answer
        np.testing.assert_array_equal(again, 2 * x[..., 0])
        assert not np.isnan(staging[:3]).any()
        assert np.shares_memory(first, again)  # the output array is reused, not allocated per call


def test_an_output_batch_that_does_not_follow_the_input_is_refused_at_load(monkeypatch, tmp_path):
    from edge.backends.base import BackendError
    from edge.backends.trt import TensorRTBackend

    plan, driver, memory = _with_dtypes(monkeypatch, tmp_path, output_batch=1)
    with pytest.raises(BackendError, match=r"output batch does not follow its input batch \(input 4 gives 1"):
        TensorRTBackend(plan, onnx_sha256="ab" * 32).activate()
    assert memory == {} and driver.stacks() == ([], [])
