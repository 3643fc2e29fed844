"""The engine build against fake tensorrt/pycuda (see fake_trt.py): timing cache, device,
plan name, layer precisions, --verify's two comparisons, and the machine's versions."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from converter.engine import layers
from converter.engine.manifest import EngineManifestError, load_engine_manifest, manifest_path, warnings_for
from converter.engine.profiles import BatchProfile
from edge.cli import main as run
from tests.converter import fake_trt
from tests.converter.test_engine_plain import L4, _add_engine, _engine_manifest


@pytest.fixture
def fakes(monkeypatch):
    trt, driver, memory = fake_trt.install(monkeypatch)
    # this machine's NVIDIA driver, whatever box the tests run on
    monkeypatch.setattr("converter.engine.machine.nvidia_driver_version", lambda: "575.57.08")
    return trt, driver, memory


def _build(package, **kwargs):
    from converter.engine.build import build_engine_for_package

    kwargs.setdefault("precision", "fp32")
    kwargs.setdefault("batch", BatchProfile(2, 4, 4))
    return build_engine_for_package(package.root, **kwargs)


# --- finding 1: the timing cache ---------------------------------------------------------


def test_cache_from_another_tensorrt_starts_empty(fakes, package_copy, tmp_path, caplog):
    """create_timing_cache returns None for a blob this TensorRT cannot read: one warning, an
    empty cache, a build, and the file replaced by this build's cache."""
    trt, _, _ = fakes
    seen = fake_trt.add_builder(trt, unreadable_caches=(b"trt9",))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"trt9")
    with caplog.at_level(logging.WARNING):
        result = _build(package_copy, timing_cache=cache)
    assert seen["cache_set"] == [b""]  # the empty fallback, never None
    assert "cannot be read by this TensorRT" in caplog.text
    assert load_engine_manifest(result.plan_path).plan_sha256
    assert cache.read_bytes() == b"built"


def test_cache_from_another_gpu_starts_empty_and_is_merged(fakes, package_copy, tmp_path, caplog):
    """set_timing_cache(cache, ignore_mismatch=False) returns False for another GPU's cache:
    warn, build with an empty one, and merge with ignore_mismatch=True on the way out."""
    trt, _, _ = fakes
    seen = fake_trt.add_builder(trt, foreign_caches=(b"a100",))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"a100")
    with caplog.at_level(logging.WARNING):
        _build(package_copy, timing_cache=cache)
    assert seen["cache_set"] == [b"a100", b""]
    assert "timing cache" in caplog.text and "from another GPU/TensorRT, starting empty" in caplog.text
    assert seen["combined"] == ([b"a100"], True)
    assert cache.read_bytes() == b"a100,built"


def test_cache_grown_by_another_build_is_merged_not_overwritten(fakes, package_copy, tmp_path):
    trt, _, _ = fakes
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    # another build writes its entries while ours runs
    seen = fake_trt.add_builder(trt, on_build=lambda: cache.write_bytes(b"old,theirs"))
    _build(package_copy, timing_cache=cache)
    assert seen["cache_in"] == b"old"
    assert cache.read_bytes() == b"built,old,theirs"


def test_a_failed_merge_still_writes_our_cache(fakes, package_copy, tmp_path, caplog):
    trt, _, _ = fakes
    fake_trt.add_builder(trt, combine_ok=False)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    with caplog.at_level(logging.WARNING):
        _build(package_copy, timing_cache=cache)
    assert "could not merge" in caplog.text
    assert cache.read_bytes() == b"built,old"  # ours (read from "old" at the start)


def test_no_timing_cache_after_the_build_keeps_the_engine(fakes, package_copy, tmp_path, caplog):
    """get_timing_cache() returning None used to raise after the plan was written but before
    its manifest: an engine without a manifest, refused at load."""
    trt, _, _ = fakes
    fake_trt.add_builder(trt, no_cache_after_build=True)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    with caplog.at_level(logging.WARNING):
        result = _build(package_copy, timing_cache=cache)
    assert "TensorRT returned no timing cache" in caplog.text
    assert load_engine_manifest(result.plan_path).plan_file == result.plan_path.name
    assert cache.read_bytes() == b"old"


def test_an_unwritable_cache_is_a_warning_not_a_lost_engine(fakes, package_copy, tmp_path, caplog):
    trt, _, _ = fakes
    fake_trt.add_builder(trt)
    cache = tmp_path / "no-such-dir" / "timing.cache"
    with caplog.at_level(logging.WARNING):
        result = _build(package_copy, timing_cache=cache)
    assert "not written" in caplog.text and "the engine is saved" in caplog.text
    assert load_engine_manifest(result.plan_path).plan_sha256
    assert not cache.exists()


# --- finding 6: device=N -----------------------------------------------------------------


def _two_gpus(monkeypatch, driver) -> None:
    """Give the fake pycuda a second device (its context stack names each context's device)."""

    class Device(driver.Device):
        @staticmethod
        def count() -> int:
            return 2

    monkeypatch.setattr(driver, "Device", Device)


def _current_device(driver):
    """The device of the context current on this thread (None when the stack is empty)."""
    current = driver.Context.get_current()
    return None if current is None else current.handle[1]


def test_build_runs_on_the_requested_device(fakes, package_copy, monkeypatch, capsys):
    trt, driver, _ = fakes
    _two_gpus(monkeypatch, driver)
    during: list = []
    fake_trt.add_builder(trt, on_build=lambda: during.append(_current_device(driver)))
    code = run(["build-engine", str(package_copy.root), "--precision", "fp32", "--device", "1"])
    assert code == 0, capsys.readouterr()
    assert during == [1]  # device 1's context was current while TensorRT built
    assert driver.stacks() == ([], [])  # and popped afterwards
    _build(package_copy, device=0)
    assert during[-1] == 0


def test_a_device_that_does_not_exist_is_one_line(fakes, package_copy):
    from converter.engine.machine import TensorRTUnavailable

    trt, _, _ = fakes
    fake_trt.add_builder(trt)
    with pytest.raises(TensorRTUnavailable, match=r"GPU 3 does not exist; this machine has 1 GPU"):
        _build(package_copy, device=3)


def test_instance_norms_are_parsed_into_tensorrt_s_own_layer(fakes, package_copy):
    # the export writes model.instance_norm's norms as InstanceNormalization ops; without the
    # flag an older parser setting would look for the InstanceNormalization_TRT plugin instead
    trt, _, _ = fakes
    seen = fake_trt.add_builder(trt)
    _build(package_copy)
    assert seen["parsed_with_flags"] == [trt.OnnxParserFlag.NATIVE_INSTANCENORM]


# --- finding 9: the batch profile in the plan name ---------------------------------------


def test_plan_name_carries_the_batch_profile(fakes, package_copy):
    from converter.engine.select import engine_candidates

    trt, _, _ = fakes
    fake_trt.add_builder(trt)
    small = _build(package_copy, batch=BatchProfile(1, 2, 2)).plan_path
    large = _build(package_copy, batch=BatchProfile(2, 4, 4)).plan_path
    assert small.name == "nvidia-l4-sm89-trt10.16.1.11-b2-fp32.plan"
    assert large.name == "nvidia-l4-sm89-trt10.16.1.11-b4-fp32.plan"
    assert small.is_file() and load_engine_manifest(small).max_batch == 2  # not overwritten
    # a plan with the old name (no -b<max>) is still found and fits: names are not read
    old = _add_engine(package_copy, replace(L4, nvidia_driver_version="575.57.08"), "fp32")
    assert "-b" not in old.name
    fits, rejected = engine_candidates(package_copy, L4)
    assert {plan for plan, _ in fits} >= {old, large} and not rejected


# --- finding 10: layer precisions --------------------------------------------------------

DETAILED = {
    "Layers": [
        {
            "Name": "input reformat",
            "LayerType": "Reformat",
            "Inputs": [{"Name": "image", "Format/Datatype": "Row major linear FP32"}],
            "Outputs": [{"Name": "x", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
        },
        {
            "Name": "c1",
            "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "x", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
            "Outputs": [{"Name": "y", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
        },
        {
            "Name": "pool",
            "LayerType": "CaskPooling",
            "Inputs": [{"Name": "y", "Format/Datatype": "Two wide channel vectorized row major FP16 format"}],
            "Outputs": [
                {"Name": "p", "Format/Datatype": "Two wide channel vectorized row major FP16 format"}
            ],
        },
        {  # a Myelin/kgen layer names the bare type
            "Name": "fused c3+up",
            "LayerType": "kgen",
            "Inputs": [{"Name": "p", "Format/Datatype": "Half"}],
            "Outputs": [{"Name": "u", "Format/Datatype": "Half"}],
        },
        {
            "Name": "head",
            "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "u", "Format/Datatype": "Row major linear FP32"}],
            "Outputs": [{"Name": "probability", "Format/Datatype": "Row major linear FP32"}],
        },
        {"Name": "shuffle", "LayerType": "Shuffle", "Inputs": [], "Outputs": []},
    ],
    "Bindings": ["image", "probability"],
}

INT8 = {
    "Layers": [
        {  # an INT8 convolution that writes a float output still runs in INT8
            "Name": "c1",
            "LayerType": "CaskConvolution",
            "Inputs": [
                {"Name": "xq", "Format/Datatype": "Channel major INT8 format where channel % 32 == 0"}
            ],
            "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}],
        },
        {
            "Name": "head",
            "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}],
            "Outputs": [{"Name": "probability", "Format/Datatype": "Row major linear FP32"}],
        },
    ]
}

#: LAYER_NAMES_ONLY (or NONE) verbosity: each layer is just its name
NAMES_ONLY = {"Layers": ["c1", "pool", "head"], "Bindings": ["image", "probability"]}


def test_layer_precision_parser_reads_both_shapes():
    # reformat and shuffle are not compute layers; 3 of 4 compute layers write FP16
    assert layers.precision_shares(DETAILED) == {"fp16": 0.75, "fp32": 0.25, "int8": 0.0}
    assert layers.precision_shares(json.dumps(INT8)) == {"int8": 0.5, "fp32": 0.5, "fp16": 0.0}
    assert layers.precision_shares(NAMES_ONLY) == {"unknown": 1.0, "fp32": 0.0, "fp16": 0.0, "int8": 0.0}
    assert layers.precision_shares({"Layers": []}) == {}
    for text, precision in [
        ("Row major linear FP32", "fp32"),
        ("Float", "fp32"),
        ("Half", "fp16"),
        ("Row major Int8 format", "int8"),
        ("Row major linear BFloat16 format", "bf16"),
        ("Row major linear Int32", "other"),
        ("Unknown format", "unknown"),
        (None, "unknown"),
    ]:
        assert layers.tensor_precision(text) == precision, text
    assert layers.format_shares({"fp16": 0.75, "fp32": 0.25, "int8": 0.0}) == "fp16 75%, fp32 25%, int8 0%"


def test_precision_problem_rules():
    fp16 = layers.precision_shares(DETAILED)
    assert layers.precision_problem("fp16", fp16) == ""
    mostly_fp32 = {"fp16": 0.4, "fp32": 0.6, "int8": 0.0}
    assert "only 40% of its compute layers in FP16" in layers.precision_problem("fp16", mostly_fp32)
    assert "no INT8 layer" in layers.precision_problem("int8", mostly_fp32)
    assert layers.precision_problem("int8", layers.precision_shares(INT8)) == ""
    assert layers.precision_problem("fp32", mostly_fp32) == ""
    # nothing known, nothing claimed
    assert layers.precision_problem("fp16", layers.precision_shares(NAMES_ONLY)) == ""
    assert layers.precision_problem("fp16", {}) == ""


def test_build_records_layer_precisions(fakes, package_copy, capsys):
    from converter.engine.build import layers_path
    from converter.inspect import describe_package

    trt, _, _ = fakes
    seen = fake_trt.add_builder(trt, layer_info=DETAILED)
    result = _build(package_copy)
    assert seen["verbosity"] == trt.ProfilingVerbosity.DETAILED
    assert seen["inspected"] == trt.LayerInformationFormat.JSON
    assert json.loads(layers_path(result.plan_path).read_text()) == DETAILED
    manifest = load_engine_manifest(result.plan_path)
    assert manifest.layer_precisions == {"fp16": 0.75, "fp32": 0.25, "int8": 0.0}
    text = describe_package(package_copy.root)
    assert f"{result.plan_path.name}: fp32" in text
    assert "layer precisions: fp16 75%, fp32 25%, int8 0%" in text
    assert "NVIDIA driver 575.57.08" in text and "CUDA toolkit 12.9.0 (driver API 12.9" in text
    # a rebuild whose inspector says nothing leaves no stale layer file, and says "unknown"
    fake_trt.add_builder(trt, layer_info="")
    result = _build(package_copy)
    assert not layers_path(result.plan_path).exists()
    assert load_engine_manifest(result.plan_path).layer_precisions == {}
    assert "layer precisions: unknown" in describe_package(package_copy.root)


def test_no_layer_information_is_a_warning_not_a_lost_engine(fakes, package_copy, monkeypatch, caplog):
    from converter.engine.build import layers_path

    trt, _, _ = fakes
    fake_trt.add_builder(trt)

    def no_runtime(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    monkeypatch.setattr(trt, "Runtime", no_runtime)
    with caplog.at_level(logging.WARNING):
        result = _build(package_copy)
    assert "no layer information for the new engine (TypeError" in caplog.text
    assert load_engine_manifest(result.plan_path).layer_precisions == {}
    assert not layers_path(result.plan_path).exists()


# --- findings 10 and 11: --verify --------------------------------------------------------


@pytest.fixture(scope="module")
def fp16_package_fake(tmp_path_factory, fp32_package, dataset):
    """The tiny package with its gated model.fp16.onnx (ONNX Runtime only)."""
    from converter.package import ModelPackage
    from converter.variants import add_variants

    root = tmp_path_factory.mktemp("fp16") / "pkg"
    shutil.copytree(fp32_package.root, root)
    return add_variants(ModelPackage.open(root), data_dir=dataset, precisions=("fp16",), gate_samples=8)


def _verify_fakes(monkeypatch, compute, layer_info):
    pycuda, driver, memory = fake_trt.make_pycuda()
    shape = (64, 64, 1)
    trt = fake_trt.make_tensorrt(memory, profile=((1, *shape), (4, *shape), (8, *shape)), compute=compute)
    fake_trt.add_builder(trt, layer_info=layer_info)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("converter.engine.machine.nvidia_driver_version", lambda: "")
    return trt


def test_verify_separates_tensorrt_error_from_the_cast(monkeypatch, fp16_package_fake, dataset, capsys):
    """The 'engine' is the FP16 graph in ONNX Runtime plus a small offset: against its own
    graph the difference is that offset (TensorRT's error); against FP32 it also holds the cast's."""
    from converter import onnx_graph

    package = fp16_package_fake
    session = onnx_graph.session(package.onnx_path("fp16"))
    _verify_fakes(monkeypatch, lambda x: session.run(None, {"image": x})[0] + 1e-3, DETAILED)
    argv = ["build-engine", str(package.root), "--precision", "fp16", "--verify", "--data", str(dataset)]
    code = run([*argv, "--verify-samples", "6"])
    out = capsys.readouterr().out
    assert code == 0, out
    own = next(line for line in out.splitlines() if "engine vs ONNX Runtime model.fp16.onnx" in line)
    fp32 = next(line for line in out.splitlines() if "engine vs ONNX Runtime model.onnx" in line)
    assert "max |diff| 0.001," in own and "max relative diff" in own
    assert "max |diff|" in fp32 and "max relative diff" in fp32
    assert "layer precisions: fp16 75%, fp32 25%, int8 0%" in out


def test_verify_fails_an_fp16_engine_that_runs_in_fp32(monkeypatch, fp16_package_fake, dataset, capsys):
    from converter import onnx_graph

    package = fp16_package_fake
    session = onnx_graph.session(package.onnx_path("fp16"))
    _verify_fakes(monkeypatch, lambda x: session.run(None, {"image": x})[0], fake_trt.FP32_LAYERS)
    argv = ["build-engine", str(package.root), "--precision", "fp16", "--verify", "--data", str(dataset)]
    code = run([*argv, "--verify-samples", "4"])
    out = capsys.readouterr().out
    assert code == 1
    (line,) = [line for line in out.splitlines() if line.startswith("precision check FAIL")]
    assert "only 0% of its compute layers in FP16 (fp32 100%, fp16 0%, int8 0%)" in line
    assert "gate PASS" in out  # the numbers agree; the precision alone fails it


def test_verify_fails_an_int8_engine_without_int8_layers(fakes, package_copy):
    from converter.engine.verify import VerifyReport
    from converter.gate import FP16_BOUNDS, compare

    gate = compare(
        np.zeros((2, 4, 4)),
        np.zeros((2, 4, 4)),
        name="x",
        threshold=0.5,
        min_defect_area=1,
        bounds=FP16_BOUNDS,
    )
    shares = layers.precision_shares(fake_trt.FP32_LAYERS)
    report = VerifyReport(gate, [], "int8", shares, layers.precision_problem("int8", shares))
    assert not report.passed and "no INT8 layer" in report.summary()


# --- finding 12: versions named for what they are ----------------------------------------


def test_probe_names_each_version(fakes):
    from converter.engine.machine import probe_machine

    machine = probe_machine()
    assert machine.tensorrt_version == "10.16.1.11"
    assert machine.cuda_toolkit_version == "12.9.0"  # pycuda's get_version()
    assert machine.cuda_driver_api_version == "12.9"  # cuDriverGetVersion 12090
    assert machine.nvidia_driver_version == "575.57.08"


def test_nvidia_driver_version_from_nvml(monkeypatch):
    import types

    from converter.engine.machine import nvidia_driver_version

    nvml = types.ModuleType("pynvml")
    calls = []
    nvml.nvmlInit = lambda: calls.append("init")
    nvml.nvmlShutdown = lambda: calls.append("shutdown")
    nvml.nvmlSystemGetDriverVersion = lambda: b"550.54.15"  # older nvidia-ml-py returns bytes
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert nvidia_driver_version() == "550.54.15" and calls == ["init", "shutdown"]


def test_nvidia_driver_version_from_nvidia_smi_then_nothing(monkeypatch, tmp_path):
    from converter.engine.machine import nvidia_driver_version

    nvml = __import__("types").ModuleType("pynvml")

    def no_driver():
        raise OSError("NVML Shared Library Not Found")

    nvml.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        '#!/bin/sh\ncase "$1" in --query-gpu=*) printf "0, NVIDIA L4, 575.57.08, 23034, 0, 8.9\\n'
        '1, NVIDIA L4, 575.57.08, 23034, 0, 8.9\\n" ;; *) exit 9 ;; esac\n'
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nvidia_driver_version() == "575.57.08"
    smi.write_text("#!/bin/sh\nexit 9\n")
    assert nvidia_driver_version() == ""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert nvidia_driver_version() == ""


def _fake_nvml(calls: list[str], count: int = 2):
    """A pynvml with ``count`` L4s (nvidia-ml-py < 11.515 returned bytes) and CUDA 12.9."""
    import types

    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: calls.append("init")
    nvml.nvmlShutdown = lambda: calls.append("shutdown")
    nvml.nvmlSystemGetDriverVersion = lambda: b"575.57.08"
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 12090
    nvml.nvmlDeviceGetCount = lambda: count
    nvml.nvmlDeviceGetHandleByIndex = lambda index: ("handle", index)
    nvml.nvmlDeviceGetName = lambda handle: b"NVIDIA L4"
    nvml.nvmlDeviceGetCudaComputeCapability = lambda handle: (8, 9)
    used = {0: 300 << 20, 1: 0}
    nvml.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(
        total=23034 << 20, used=used[handle[1]], free=0
    )
    return nvml


def test_probe_nvml_reads_the_driver_cuda_and_every_gpu(monkeypatch):
    from converter.engine.machine import probe_nvml

    calls: list[str] = []
    nvml = _fake_nvml(calls)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    gpu = {"name": "NVIDIA L4", "compute_capability": "8.9", "memory_total_mib": 23034}
    assert probe_nvml() == {
        "usable": True,
        "why": "",
        "nvidia_driver": "575.57.08",
        "cuda_driver_api": "12.9",
        "gpus": [{"index": 0, **gpu, "memory_used_mib": 300}, {"index": 1, **gpu, "memory_used_mib": 0}],
    }
    assert calls == ["init", "shutdown"]

    def lost():
        raise RuntimeError("GPU is lost")

    nvml.nvmlDeviceGetCount = lost  # a failed query keeps the driver and still shuts NVML down
    result = probe_nvml()
    assert result["usable"] is False and result["nvidia_driver"] == "575.57.08"
    assert result["why"] == "NVML query failed: RuntimeError: GPU is lost"
    assert calls[-1] == "shutdown"
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert probe_nvml()["why"].startswith("nvidia-ml-py is not installed (ModuleNotFoundError")


def test_probe_nvidia_smi_parses_gpus_and_asks_old_drivers_without_compute_cap(monkeypatch, tmp_path):
    from converter.engine.machine import probe_nvidia_smi

    smi = tmp_path / "nvidia-smi"
    # a driver before r510: the query with compute_cap fails, the one without answers
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  *compute_cap*) echo 'Field \"compute_cap\" is not a valid field to query.'; exit 2 ;;\n"
        '  --query-gpu=*) printf "0, Tesla T4, 470.82.01, 15360, [N/A]\\n" ;;\n'
        '  *) echo "| NVIDIA-SMI 470.82.01    Driver Version: 470.82.01    CUDA Version: 11.4     |" ;;\n'
        "esac\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    gpu = {"index": 0, "name": "Tesla T4", "memory_total_mib": 15360, "memory_used_mib": None}
    assert probe_nvidia_smi() == {
        "usable": True,
        "why": "",
        "nvidia_driver": "470.82.01",
        "cuda_driver_api": "11.4",
        "gpus": [{**gpu, "compute_capability": None}],
    }
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed'; exit 9\n")
    assert probe_nvidia_smi() == {
        "usable": False,
        "gpus": [],
        "why": "nvidia-smi failed: NVIDIA-SMI has failed",
    }
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert probe_nvidia_smi()["why"] == "nvidia-smi not found (no NVIDIA driver on this box?)"


def test_old_manifest_is_refused_and_drivers_are_compared(tmp_path):
    plan = tmp_path / "x.plan"
    data = _engine_manifest(L4, "ab" * 32).to_dict()
    for key in (
        "cuda_toolkit_version",
        "cuda_driver_api_version",
        "nvidia_driver_version",
        "layer_precisions",
    ):
        data.pop(key)
    data.update(schema_version=1, cuda_version="12.9", driver_version="12.9")
    manifest_path(plan).write_text(json.dumps(data))
    with pytest.raises(EngineManifestError, match=r"schema_version 1 is not 2; rebuild the engine"):
        load_engine_manifest(plan)
    built = replace(_engine_manifest(L4, "ab" * 32), nvidia_driver_version="575.57.08")
    assert warnings_for(built, replace(L4, nvidia_driver_version="580.65.06")) == []
    assert warnings_for(built, replace(L4, nvidia_driver_version="550.54.15")) == [
        "NVIDIA driver 550.54.15 is older than the build machine's 575.57.08"
    ]
    # without the real driver on one side, the CUDA driver API versions are compared
    assert warnings_for(built, replace(L4, cuda_driver_api_version="12.4")) == [
        "CUDA driver API 12.4 is older than the build machine's 12.9"
    ]


def test_no_old_version_names_left():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for folder in ("converter", "edge"):
        for base, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                if name.endswith(".py"):
                    text = Path(base, name).read_text()
                    assert ".driver_version" not in text and ".cuda_version" not in text, name


def test_an_int8_graph_laid_out_for_onnxruntime_is_refused_in_one_line(package_copy):
    """uint8 activations (`--int8-target onnxruntime`) are not a graph TensorRT can take."""
    from converter.engine.build import EngineBuildError, pick_graph

    m = package_copy.manifest
    shutil.copy(package_copy.onnx_path("fp32"), package_copy.root / "model.int8.onnx")
    m.files["int8"] = "model.int8.onnx"
    m.gates["int8"] = {"passed": True, "target": "tensorrt"}
    assert pick_graph(package_copy, "int8", False).name == "model.int8.onnx"
    m.gates["int8"]["target"] = "onnxruntime"
    with pytest.raises(EngineBuildError, match=r"laid out for ONNX Runtime .*--int8-target tensorrt"):
        pick_graph(package_copy, "int8", False)
