"""TensorRT build, load and verify on a real GPU (marker ``gpu``; skipped here with the reason)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from converter import onnx_graph
from converter.engine.manifest import load_engine_manifest, manifest_path
from converter.engine.profiles import BatchProfile
from converter.preprocessing import normalize
from converter.samples import load_samples
from converter.variants import add_variants
from tests.converter.conftest import SIZE, recipe_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def fp16_package(tmp_path_factory, fp32_package, dataset):
    import shutil

    from converter.package import ModelPackage

    root = tmp_path_factory.mktemp("gpu") / "pkg"
    shutil.copytree(fp32_package.root, root)
    return add_variants(
        ModelPackage.open(root), data_dir=dataset, precisions=("fp16", "int8"), gate_samples=16
    )


@pytest.fixture(scope="module")
def built(fp16_package, tmp_path_factory):
    from converter.engine.build import build_engine_for_package

    cache = tmp_path_factory.mktemp("cache") / "timing.cache"
    result = build_engine_for_package(
        fp16_package.root,
        precision="fp16",
        batch=BatchProfile(2, 4, 4),
        workspace_bytes=1 << 30,
        timing_cache=cache,
    )
    assert cache.is_file() and cache.stat().st_size > 0
    return result


def test_build_writes_plan_and_manifest(built, fp16_package):
    manifest = load_engine_manifest(built.plan_path)
    assert built.plan_path.parent == fp16_package.engines_dir
    assert (
        manifest.precision == "fp16" and manifest.strongly_typed and manifest.onnx_file == "model.fp16.onnx"
    )
    assert manifest.profiles[0]["max"] == [4, SIZE, SIZE, 1] and manifest.build_seconds > 0
    from converter.engine.select import select_engine

    assert select_engine(fp16_package)[0] == built.plan_path


def test_backend_matches_onnxruntime(built, fp16_package, dataset):
    from edge.backends.trt import TensorRTBackend

    images = normalize(load_samples(dataset, SIZE, SIZE, 1, limit=7).images, "zero_one")
    reference = onnx_graph.run_batches(onnx_graph.session(fp16_package.onnx_path("fp32")), images)[..., 0]
    with TensorRTBackend.for_package(fp16_package, built.plan_path) as backend:
        assert backend.max_batch == 4
        for n in (1, 3, 7):  # padded to min 2, exact, split 4+3
            out = backend.infer(images[:n])
            assert out.shape == (n, SIZE, SIZE)
            np.testing.assert_allclose(out, reference[:n], atol=2e-2)
    assert backend._runner is None  # freed on exit


def test_verify(built, fp16_package, dataset):
    from converter.engine.verify import verify_engine

    report = verify_engine(fp16_package.root, built.plan_path, data_dir=dataset, samples=8)
    assert report.passed and report.gate.dice >= 0.99
    assert report.layer_precisions.get("fp16", 0.0) >= 0.5  # TensorRT really ran it in FP16


def test_int8_engine_builds(fp16_package):
    from converter.engine.build import build_engine_for_package

    result = build_engine_for_package(fp16_package.root, precision="int8", batch=BatchProfile(1, 2, 2))
    manifest = load_engine_manifest(result.plan_path)
    assert manifest.precision == "int8" and manifest.layer_precisions.get("int8", 0.0) > 0


def test_real_mismatch_is_refused(built, tmp_path):
    import shutil

    from edge.backends.base import BackendError
    from edge.backends.trt import TensorRTBackend

    plan = tmp_path / built.plan_path.name
    shutil.copy(built.plan_path, plan)
    data = json.loads(manifest_path(built.plan_path).read_text())
    data["tensorrt_version"] = "9.0.0"
    manifest_path(plan).write_text(json.dumps(data))
    with pytest.raises(BackendError, match=r"TensorRT: engine built with 9\.0\.0"):
        TensorRTBackend(plan).activate()


def test_instance_norm_model_builds_and_matches_onnxruntime(tmp_path, dataset):
    """model.instance_norm's norms reach TensorRT as InstanceNormalization ops (the export fuses
    them, converter/instance_norm.py): the parser takes them as its own layer, and the FP16
    engine gives ONNX Runtime's FP32 map."""
    from converter.engine.build import build_engine_for_package
    from converter.export import export_package
    from edge.backends.trt import TensorRTBackend

    model = recipe_model(
        architecture="tinyunet", base_filters=4, batch_norm=True, instance_norm=True, standardize=True
    )
    model.save(tmp_path / "in.keras")
    package = export_package(tmp_path / "in.keras", tmp_path / "pkg", height=SIZE, width=SIZE, channels=1)
    package = add_variants(package, data_dir=dataset, precisions=("fp16",), gate_samples=8)
    graph = onnx_graph.load(package.onnx_path("fp16"))
    assert any(n.op_type == "InstanceNormalization" for n in graph.graph.node)
    result = build_engine_for_package(package.root, precision="fp16", batch=BatchProfile(1, 2, 2))
    images = normalize(load_samples(dataset, SIZE, SIZE, 1, limit=3).images, "zero_one")
    reference = onnx_graph.run_batches(onnx_graph.session(package.onnx_path("fp32")), images)[..., 0]
    with TensorRTBackend.for_package(package, result.plan_path) as backend:
        np.testing.assert_allclose(backend.infer(images), reference, atol=2e-2)
