"""A package's graphs are the ones its manifest describes: sha256 of every named file, and the
graph's inputs/outputs against the manifest (names, shape, layout, dtype). Real files and
real ONNX graphs (tests/converter/graphs.py); the line-side refusal is in
tests/edge/test_package_refused.py."""

from __future__ import annotations

import json

import pytest

from converter.manifest import InputSpec, ManifestError, ModelManifest, OutputSpec
from converter.onnx_graph import GraphError, check_io
from converter.package import ModelPackage, PackageFileError, sha256_file
from tests.converter.graphs import write_graph


def _package(tmp_path, layout: str = "NHWC", **graph) -> ModelPackage:
    """A package whose manifest (128x128x1, ``layout``) records the hash of the graph written."""
    path = write_graph(tmp_path / "model.onnx", **graph)
    manifest = ModelManifest(
        model_id="m",
        architecture="test",
        input=InputSpec(name="image", height=128, width=128, channels=1, layout=layout),
        output=OutputSpec(name="probability"),
    )
    manifest.record_file("fp32", "model.onnx", sha256_file(path))
    manifest.save(tmp_path)
    return ModelPackage.open(tmp_path)


def test_verify_passes_the_exported_files_and_names_a_changed_one(tmp_path):
    package = _package(tmp_path)
    assert package.verify() == []  # every graph checked
    package.check_graph_io()
    # a graph swapped after export for another valid one of the same I/O: only the hash tells
    data = (tmp_path / "model.onnx").read_bytes()
    (tmp_path / "model.onnx").write_bytes(data.replace(b"lineside-test", b"lineside-tesT"))
    with pytest.raises(PackageFileError) as info:
        ModelPackage.open(tmp_path).verify()
    assert str(info.value) == (
        f"{tmp_path / 'model.onnx'}: sha256 does not match manifest.json (file changed after export); "
        "re-run `lineside export`"
    )


def test_verify_checks_every_named_graph(tmp_path):
    package = _package(tmp_path)
    fp16 = write_graph(tmp_path / "model.fp16.onnx")
    package.manifest.record_file("fp16", "model.fp16.onnx", sha256_file(fp16))
    package.manifest.save(tmp_path)
    assert ModelPackage.open(tmp_path).verify() == []
    fp16.write_bytes(fp16.read_bytes() + b"\0")
    with pytest.raises(PackageFileError, match=r"model\.fp16\.onnx: sha256 does not match"):
        ModelPackage.open(tmp_path).verify()


def test_schema_1_manifest_opens_and_says_what_is_unchecked(tmp_path):
    _package(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["schema_version"] = 1
    del data["files_sha256"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    package = ModelPackage.open(tmp_path)
    assert package.manifest.files_sha256 == {}
    assert package.verify() == ["model.onnx"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("files_sha256"), "missing key 'files_sha256'"),
        (lambda d: d.update(files_sha256={}), "no valid sha256 for 'model.onnx' (got None)"),
        (lambda d: d.update(files_sha256={"model.onnx": "abc"}), "no valid sha256 for 'model.onnx'"),
    ],
)
def test_schema_2_manifest_needs_a_hash_per_file(tmp_path, edit, message):
    _package(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    edit(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError) as info:
        ModelPackage.open(tmp_path)
    assert message in str(info.value) and "manifest.json" in str(info.value)


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (
            {"in_shape": ["batch", 64, 64, 1]},
            "input height: graph 64, manifest 128; input width: graph 64, manifest 128; "
            "output height: graph 64, manifest 128; output width: graph 64, manifest 128",
        ),
        ({"in_shape": [1, 128, 128, 1]}, "input batch: graph fixed 1, manifest dynamic"),
        (
            {"in_shape": ["batch", 1, 128, 128]},
            "input layout: graph ['batch', 1, 128, 128] is NCHW, manifest NHWC",
        ),
        ({"in_shape": ["batch", "h", 128, 1]}, "input height: graph dynamic ('h'), manifest 128"),
        ({"in_shape": ["batch", 128, 128]}, "input shape: graph ['batch', 128, 128], manifest"),
        ({"in_shape": ["batch", 128, 128, 3]}, "input channels: graph 3, manifest 1"),
        ({"in_name": "input_1"}, "input name: graph 'input_1', manifest 'image'"),
        ({"in_dtype": "uint8"}, "input dtype: graph uint8, manifest float32"),
        ({"out_name": "mask"}, "output name: graph 'mask', manifest 'probability'"),
        ({"out_dtype": "uint8"}, "output dtype: graph uint8, manifest float32"),
        ({"out_shape": ["batch", 128, 128, 2]}, "output channels: graph 2, manifest 1"),
        ({"inputs": 2}, "the graph has 2 input(s) and 1 output(s)"),
    ],
)
def test_graph_io_disagreeing_with_the_manifest_is_one_line_naming_both(tmp_path, graph, message):
    package = _package(tmp_path, **graph)
    assert package.verify() == []  # the hash is right: only the I/O check can see this
    with pytest.raises(GraphError) as info:
        package.check_graph_io("fp32")
    text = str(info.value)
    assert "\n" not in text and message in text, text
    assert text.startswith(f"{tmp_path / 'model.onnx'} does not match manifest.json: ") or "input(s)" in text
    assert text.endswith("re-run `lineside export`")


def test_graph_io_matching_the_manifest_passes(tmp_path):
    # NCHW packages are checked in their own layout; an output may leave H/W to inference
    _package(tmp_path, layout="NCHW", in_shape=["batch", 1, 128, 128]).check_graph_io()
    _package(tmp_path, out_shape=["batch", "?", "w", 1]).check_graph_io()


def test_an_unreadable_or_missing_graph_is_one_line(tmp_path):
    package = _package(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    with pytest.raises(GraphError, match="not a readable ONNX file"):
        check_io(tmp_path / "model.onnx", package.manifest)
    with pytest.raises(ManifestError, match="the package has no fp16 graph"):
        package.check_graph_io("fp16")
