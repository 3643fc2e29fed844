"""``lineside export``: Keras checkpoint / .keras / SavedModel -> checked model package."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from converter import onnx_graph
from converter.checkpoint import CheckpointError
from converter.export import ExportError, check_parity, export_package
from converter.package import ModelPackage, sha256_file
from converter.preprocessing import normalize
from converter.samples import load_samples
from tests.conftest import ppocr_detector
from tests.converter.conftest import SIZE, build_unet, recipe_model, write_checkpoint


def test_package_from_trained_checkpoint(fp32_package, trained_checkpoint, dataset):
    package = ModelPackage.open(fp32_package.root)
    m = package.manifest
    assert (m.input.height, m.input.width, m.input.channels, m.input.layout) == (SIZE, SIZE, 1, "NHWC")
    assert (m.input.name, m.output.name, m.normalization, m.threshold) == (
        "image",
        "probability",
        "zero_one",
        0.5,
    )
    assert m.source_checkpoint_sha256 and m.tool_versions["onnxruntime"]
    assert m.gates["export"]["max_abs_diff"] <= 1e-4
    # the manifest records the graph's sha256, so a graph changed after export is refused
    assert m.schema_version == 3 and m.files_sha256 == {"model.onnx": sha256_file(package.onnx_path())}
    assert package.verify() == []
    package.check_graph_io()  # the graph's I/O is what the manifest says
    model = onnx_graph.load(package.onnx_path())
    assert onnx_graph.opset(model) >= 17
    shape = onnx_graph.io_summary(model)["inputs"][0]["shape"]
    assert shape == ["batch", SIZE, SIZE, 1]  # dynamic batch, fixed H/W/C
    assert onnx_graph.io_summary(model)["outputs"][0]["shape"] == ["batch", SIZE, SIZE, 1]

    # the graph runs at several batch sizes and gives Keras' answer
    import keras

    reference = keras.models.load_model(trained_checkpoint / "model.keras", compile=False)
    x = normalize(load_samples(dataset, SIZE, SIZE, 1, limit=5).images, "zero_one")
    sess = onnx_graph.session(package.onnx_path())
    for batch in (1, 2, 5):
        got = sess.run(None, {"image": x[:batch]})[0]
        assert got.shape == (batch, SIZE, SIZE, 1)
        np.testing.assert_allclose(got, reference.predict(x[:batch], verbose=0), atol=1e-5)


def test_parity_check_refuses_a_wrong_graph(fp32_package, dataset):
    class Wrong:
        @staticmethod
        def predict(batch):
            return np.zeros((len(batch), SIZE, SIZE, 1), np.float32) + 0.01

    x = normalize(load_samples(dataset, SIZE, SIZE, 1, limit=3).images, "zero_one")
    with pytest.raises(ExportError, match="differs from the source model"):
        check_parity(Wrong, fp32_package.onnx_path(), x, "3 images")


def test_bare_keras_file_needs_its_size(tmp_path):
    model = build_unet(size=None)
    path = tmp_path / "free.keras"
    model.save(path)
    with pytest.raises(CheckpointError, match="pass --height"):
        export_package(path, tmp_path / "out", samples=2)
    package = export_package(
        path, tmp_path / "out", height=32, width=48, channels=1, samples=2, model_id="free"
    )
    assert (package.manifest.input.height, package.manifest.input.width) == (32, 48)
    assert package.manifest.model_id == "free" and package.manifest.architecture == "unknown"
    assert "seeded random" in package.manifest.gates["export"]["source"]


@pytest.mark.parametrize(
    "option",
    [
        {"input_stride": 2},
        {"input_stride": 2, "stem_filters": 12},
        {"input_stride": 2, "fine_filters": 4},
        {"input_stride": 4, "fine_filters": 4, "fine_stride": 2},
        {"input_stride": 4, "surface_window": 28},
        {"instance_norm": True},
    ],
    ids=["strided_stem", "wide_stem", "fine_filters", "fine_stride", "surface_window", "instance_norm"],
)
def test_tinyunet_options_export_with_parity(tmp_path, option, caplog):
    """model.input_stride's strided stem conv and repeated logits, and model.instance_norm's
    GroupNormalization layers (which do not fold into the convs as BatchNorm does), each with
    model.standardize and BatchNorm as the real-surface runs use them, reach ONNX Runtime with
    the same map."""
    caplog.set_level(logging.INFO, logger="converter.export")
    cfg = {"architecture": "tinyunet", "base_filters": 4, "batch_norm": True, "standardize": True}
    model = recipe_model(**cfg, **option)
    path = tmp_path / "option.keras"
    model.save(path)
    package = export_package(
        path, tmp_path / "pkg", height=64, width=128, channels=1, samples=2, model_id="option"
    )
    x = np.random.default_rng(2).random((2, 64, 128, 1), dtype=np.float32)
    got = onnx_graph.session(package.onnx_path()).run(None, {"image": x})[0]
    # float32 round-off: the instance norm's statistics are summed in another order (2e-5 seen)
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-4)
    # the per-image means of model.standardize, one axis at a time
    import onnx

    graph = onnx.load(str(package.onnx_path())).graph
    means = [n for n in graph.node if n.op_type == "ReduceMean"]
    axes = [onnx.helper.get_attribute_value(a) for n in means for a in n.attribute if a.name == "axes"]
    assert len(axes) == len(means) > 0 and all(len(a) == 1 for a in axes)
    # each instance norm is one InstanceNormalization op (converter/instance_norm.py)
    norms = sum(type(layer).__name__ == "GroupNormalization" for layer in model.layers)
    assert sum(n.op_type == "InstanceNormalization" for n in graph.node) == norms
    assert norms > 0 or "instance_norm" not in option
    assert (f"{norms} instance norm(s) as InstanceNormalization ops" in caplog.text) == (norms > 0)


def test_the_pretrained_encoder_exports_with_parity_and_fp16(tmp_path):
    """lcnet_unet (PP-OCRv4's backbone rebuilt in built-in layers: hard swish, depthwise convs,
    explicit padding) reaches ONNX Runtime with the same map, in FP32 and in the FP16 graph."""
    ppocr_detector()
    model = recipe_model(
        architecture="lcnet_unet", base_filters=4, batch_norm=True, standardize=True, encoder_weights="ppocr"
    )
    path = tmp_path / "lcnet.keras"
    model.save(path)
    package = export_package(
        path, tmp_path / "pkg", height=64, width=128, channels=1, samples=2, model_id="lcnet"
    )
    x = np.random.default_rng(3).random((2, 64, 128, 1), dtype=np.float32)
    want = model.predict(x, verbose=0)
    got = onnx_graph.session(package.onnx_path()).run(None, {"image": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)
    import onnx

    from converter.fp16 import convert

    half_graph = convert(onnx.load(str(package.onnx_path())))
    half = onnx_graph.session(half_graph.SerializeToString()).run(None, {"image": x})[0]
    assert np.abs(half - want).max() < 0.02


def test_savedmodel(tmp_path):
    model = build_unet(size=32)  # skips where TensorFlow is not installed
    import tensorflow as tf

    saved = tmp_path / "saved"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    training = {"architecture": "tinyunet", "threshold": 0.3, "mask_threshold": 0.125}
    (tmp_path / "training.json").write_text(json.dumps(training))
    package = export_package(saved, tmp_path / "pkg", samples=3)
    assert package.manifest.threshold == 0.3 and package.manifest.input.height == 32
    assert package.manifest.mask_threshold == 0.125
    # a threshold given to export draws the mask at itself: the trained mask threshold was chosen
    # for the trained threshold
    other = export_package(saved, tmp_path / "pkg2", samples=3, threshold=0.6)
    assert (other.manifest.threshold, other.manifest.mask_threshold) == (0.6, None)
    x = np.random.default_rng(1).random((2, 32, 32, 1), dtype=np.float32)
    got = onnx_graph.session(package.onnx_path()).run(None, {"image": x})[0]
    np.testing.assert_allclose(got, model.predict(tf.constant(x), verbose=0), atol=1e-5)


def test_reexport_removes_stale_variants(package_copy, trained_checkpoint):
    stale = package_copy.root / "model.fp16.onnx"
    stale.write_bytes(b"old")
    package = export_package(trained_checkpoint, package_copy.root, samples=2)
    assert not stale.exists() and package.has_precision("fp32") and not package.has_precision("fp16")


def test_a_failed_export_leaves_no_new_folder_and_an_old_package_whole(
    package_copy, trained_checkpoint, tmp_path
):
    """A refused export (here: parity, at an atol no graph meets) into a new folder takes the
    folder back; into an existing package it leaves that package as it was."""
    fresh = tmp_path / "new" / "pkg"
    with pytest.raises(ExportError, match="differs from the source model"):
        export_package(trained_checkpoint, fresh, samples=2, atol=-1.0)
    assert not fresh.exists() and (tmp_path / "new").is_dir()  # only the folder the export made
    before = {f.name: f.read_bytes() for f in package_copy.root.iterdir()}
    with pytest.raises(ExportError, match="differs from the source model"):
        export_package(trained_checkpoint, package_copy.root, samples=2, atol=-1.0)
    assert {f.name: f.read_bytes() for f in package_copy.root.iterdir()} == before


def _parity_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("parity on ")]


def test_parity_without_data_uses_the_training_data_in_training_json(
    trained_checkpoint, dataset, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="converter.export")
    package = export_package(trained_checkpoint, tmp_path / "pkg", samples=4)
    assert _parity_lines(caplog) == [
        f"parity on the training data recorded in training.json: folders {dataset}"
    ]
    source = package.manifest.gates["export"]["source"]
    assert source == f"4 images from {dataset} (the training data recorded in training.json)"


@pytest.mark.parametrize(
    ("recorded", "why"),
    [
        ({"kind": "folders", "root": "MISSING"}, "which is not on this machine"),
        ({"kind": "severstal", "root": "DATA"}, "which the checks cannot read (DAGM or images/+masks/)"),
        ({"kind": "dagm", "root": "EMPTY"}, "which the checks cannot read"),
        (None, "training.json records no data set"),
    ],
)
def test_parity_falls_back_to_random_images_and_says_why(
    recorded, why, trained_checkpoint, dataset, tmp_path, caplog
):
    # the trained checkpoint, with training.json pointing at data the checks cannot use
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained_checkpoint, ckpt)
    training = json.loads((ckpt / "training.json").read_text())
    (tmp_path / "empty").mkdir()
    if recorded is None:
        del training["dataset"]
    else:
        roots = {"MISSING": tmp_path / "gone", "DATA": dataset, "EMPTY": tmp_path / "empty"}
        training["dataset"] = {**recorded, "root": str(roots[recorded["root"]])}
    (ckpt / "training.json").write_text(json.dumps(training))
    caplog.set_level(logging.INFO, logger="converter.export")
    package = export_package(ckpt, tmp_path / "pkg", samples=2)
    (line,) = _parity_lines(caplog)
    assert line.startswith("parity on seeded random images: ") and why in line
    source = package.manifest.gates["export"]["source"]
    assert source.startswith("2 seeded random images (no --data given; ") and why in source


def test_a_keras_too_old_to_export_onnx_gets_the_fix_in_one_line(tmp_path, monkeypatch):
    """Keras 3.3.3 (what `keras>=3.3` allowed until stop 50) failed the export with a TypeError
    from deep inside Model.export; an older Keras now gets one line with the fix, and no package."""
    import keras

    model = build_unet(size=None)
    path = tmp_path / "free.keras"
    model.save(path)
    monkeypatch.setattr(keras, "__version__", "3.11.3")
    with pytest.raises(ExportError, match=r"^Keras 3\.11\.3 cannot export .* pip install -U 'keras>=3\.12'$"):
        export_package(path, tmp_path / "out", height=32, width=32, channels=1, samples=2)
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(keras, "__version__", "3.12.0")  # the oldest that can
    export_package(path, tmp_path / "out", height=32, width=32, channels=1, samples=2)
    assert (tmp_path / "out" / "model.onnx").exists()


def test_bad_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        export_package(tmp_path / "absent", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"found neither model\.keras nor saved_model\.pb"):
        export_package(tmp_path / "empty", tmp_path / "out")
    folder = write_checkpoint(build_unet(), tmp_path / "ckpt")
    (folder / "training.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        export_package(folder, tmp_path / "out")


def test_model_id_is_the_training_runs_name(tmp_path):
    """The recipe's name from training.json, not the export folder's; else the run folder's name."""
    model = build_unet()
    named = write_checkpoint(model, tmp_path / "runs" / "2026-06-01", recipe="benchmark")
    package = export_package(named, tmp_path / "package", samples=2)
    assert package.manifest.model_id == "benchmark"
    unnamed = write_checkpoint(model, tmp_path / "runs" / "nightly")
    package = export_package(unnamed, tmp_path / "package", samples=2)
    assert package.manifest.model_id == "nightly"
    package = export_package(named, tmp_path / "package", samples=2, model_id="line3-v2")
    assert package.manifest.model_id == "line3-v2"


@pytest.mark.parametrize(
    ("layout", "given", "expected"),
    [
        ({"run/training.json": "{}", "run/model.keras": ""}, "run", "run"),
        ({"run/training.json": "{}", "run/model.keras": ""}, "run/model.keras", "run"),
        ({"free.keras": ""}, "free.keras", "free"),
        ({"run/training.json": "{}", "run/saved/saved_model.pb": ""}, "run/saved", "run"),
        ({"run/saved_model/saved_model.pb": ""}, "run/saved_model", "run"),
        ({"exported/saved_model.pb": ""}, "exported", "exported"),
    ],
)
def test_run_name_without_a_recipe_name(tmp_path, layout, given, expected):
    from converter.checkpoint import Checkpoint, run_name

    for rel, text in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    path = tmp_path / given
    checkpoint = Checkpoint(path=path, kind="keras", model_path=path)
    assert run_name(checkpoint) == expected
    checkpoint.training = {"recipe": "benchmark"}
    assert run_name(checkpoint) == "benchmark"
