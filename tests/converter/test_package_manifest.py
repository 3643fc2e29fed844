"""Model manifest and package: round trip and the validation errors a user can hit."""

from __future__ import annotations

import json

import pytest

from converter.manifest import SCHEMA_VERSION, InputSpec, ManifestError, ModelManifest, OutputSpec
from converter.package import ModelPackage


def _manifest(**overrides) -> ModelManifest:
    manifest = ModelManifest(
        model_id="m1",
        architecture="tinyunet",
        input=InputSpec(name="image", height=64, width=48, channels=1),
        output=OutputSpec(name="probability"),
        threshold=0.4,
        min_defect_area=9,
        dataset={"kind": "dagm", "classes": [1]},
        files={"fp32": "model.onnx", "fp16": "model.fp16.onnx"},
        files_sha256={"model.onnx": "0" * 64, "model.fp16.onnx": "f" * 64},
        gates={"fp16": {"passed": True, "dice": 0.999}},
    )
    for key, value in overrides.items():
        setattr(manifest, key, value)
    return manifest


def _write(tmp_path, data: dict) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    (tmp_path / "model.onnx").write_bytes(b"not checked here")


def test_round_trip(tmp_path):
    manifest = _manifest()
    manifest.save(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"x")
    package = ModelPackage.open(tmp_path)
    assert package.manifest == manifest
    assert package.manifest.schema_version == SCHEMA_VERSION
    assert package.onnx_path("fp32") == tmp_path / "model.onnx"
    assert package.has_precision("fp32") and not package.has_precision("fp16")  # named but file missing
    assert package.engine_plans() == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("schema_version"), "missing key 'schema_version'"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda d: d.update(threshold=1.5), "threshold is 1.5; must be > 0 and < 1"),
        (lambda d: d.update(bogus=1), "unknown key 'bogus'"),
        (lambda d: d["input"].update(height=0), "input.height is 0; must be > 0"),
        (lambda d: d["input"].update(layout="HWC"), "allowed: NHWC, NCHW"),
        (lambda d: d.update(normalization="imagenet"), "allowed: zero_centered, zero_one"),
        (lambda d: d.update(files={"fp16": "x.onnx"}), "must name the fp32 graph"),
        (lambda d: d.update(min_defect_area="16"), "min_defect_area must be int"),
        (lambda d: d.pop("threshold"), "missing key 'threshold'"),
        (lambda d: d["files_sha256"].pop("model.fp16.onnx"), "no valid sha256 for 'model.fp16.onnx'"),
        (lambda d: d.update(schema_version="2"), "schema_version must be int"),
        (lambda d: d["input"].pop("width"), "missing key 'input.width'"),
        (lambda d: d.update(mask_threshold=1.0), "mask_threshold is 1.0; must be > 0 and < 1"),
    ],
)
def test_validation_errors_name_the_key(tmp_path, edit, message):
    data = _manifest().to_dict()
    edit(data)
    _write(tmp_path, data)
    with pytest.raises(ManifestError) as info:
        ModelPackage.open(tmp_path)
    assert message in str(info.value)
    assert str(tmp_path / "manifest.json") in str(info.value)
    assert "\n" not in str(info.value) and "lineside export" in str(info.value)


def test_a_schema_2_manifest_draws_its_mask_at_its_threshold_and_schema_3_keeps_its_own(tmp_path):
    data = _manifest().to_dict()
    assert data["schema_version"] == SCHEMA_VERSION == 3 and data["mask_threshold"] is None
    del data["mask_threshold"]
    data["schema_version"] = 2  # written before the mask threshold: still read, drawn at threshold
    _write(tmp_path, data)
    assert ModelPackage.open(tmp_path).manifest.mask_threshold is None
    _manifest(mask_threshold=0.125).save(tmp_path)
    assert ModelPackage.open(tmp_path).manifest.mask_threshold == 0.125


def test_not_json_and_missing(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        ModelPackage.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{truncated")
    with pytest.raises(ManifestError, match="not valid JSON"):
        ModelPackage.open(tmp_path)
    with pytest.raises(ManifestError, match="no such model package folder"):
        ModelPackage.open(tmp_path / "absent")


def test_fp32_graph_must_exist(tmp_path):
    _manifest().save(tmp_path)
    with pytest.raises(ManifestError, match="FP32 graph but it is missing"):
        ModelPackage.open(tmp_path)
