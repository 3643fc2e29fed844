"""`lineside bench`: percentiles against numpy, the report against its schema, backends that
cannot run listed with the reason, the whole line end to end on a tiny configuration, and
TensorRT's H2D/compute/D2H split against the fake tensorrt/pycuda modules."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edge import bench
from tests.conftest import MODEL_SIZE
from tests.converter import fake_trt
from tests.converter.test_engine_fake_trt import _plan
from tests.converter.test_engine_plain import L4

ROOT = bench.SCHEMA_PATH.parents[1]


@pytest.mark.parametrize("n", [1, 2, 5, 100, 1001])
def test_percentiles_match_numpy(n):
    values = np.random.default_rng(n).lognormal(size=n) * 10
    for q in (0, 1, 25, 37.5, 50, 90, 95, 99, 99.9, 100):
        assert bench.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)
    stats = bench.latency_stats(values)
    assert list(stats) == ["min", "mean", "p50", "p90", "p95", "p99", "max"]
    assert stats["mean"] == pytest.approx(values.mean())
    assert (stats["min"], stats["max"]) == (values.min(), values.max())
    with pytest.raises(ValueError):
        bench.percentile([], 50)


def test_the_schema_checker_finds_what_is_wrong():
    schema = bench.load_schema()
    assert bench.validate({}, schema)  # everything missing
    report = {
        "schema_version": 1,
        "created": "now",
        "package": "p",
        "model_id": "m",
        "input": "8x8x1",
        "machine": {"cpu": "x", "cores": 2, "load_1m": 1.0, "python": "3.11"},
        "rounds": 1,
        "seconds": 1.0,
        "rows": [],
        "unavailable": [{"backend": "keras", "reason": "no model"}],
        "pipeline": None,
    }
    assert bench.validate(report, schema) == []
    report["rows"] = [{"backend": "onnxruntime:fp32", "batch": 0}]
    errors = bench.validate(report, schema)
    assert any("batch: 0 is below 1" in e for e in errors) and any(
        "'latency_ms' is missing" in e for e in errors
    )
    report["rows"], report["pipeline"] = [], {"graph": "other"}
    assert bench.validate(report, schema) == ["$.pipeline: matches none of its allowed forms"]


def test_backends_side_by_side_and_the_unavailable_with_their_reason(trained_package, tmp_path):
    specs = ["onnxruntime:fp32", "opencv", "onnxruntime:int8", "keras", "tensorrt", "tflite"]
    report = bench.bench_backends(str(trained_package), specs, [1, 2], rounds=2, seconds=0.2, threads=1)
    ran = [r["backend"] for r in report["rows"]]
    skipped = {u["backend"]: u["reason"] for u in report["unavailable"]}
    assert set(ran) | set(skipped) == set(specs) and not set(ran) & set(skipped)
    assert ran[0] == "onnxruntime:fp32"
    assert "--keras MODEL.keras" in skipped["keras"]
    assert "unknown backend 'tflite'" in skipped["tflite"]
    if "onnxruntime:int8" in skipped:
        assert "--precision int8" in skipped["onnxruntime:int8"]
    for batch in (1, 2):
        rows = [r for r in report["rows"] if r["batch"] == batch]
        assert rows[0]["backend"] == "onnxruntime:fp32" and rows[0]["ratio"] == 1.0
        for r in rows:
            lat = r["latency_ms"]
            assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
            assert r["rounds"] == 2 and r["runs"] >= 2 and r["img_per_s"] > 0
    path = tmp_path / "bench.json"
    bench.write_json(report, str(path))
    assert bench.validate(json.loads(path.read_text()), bench.load_schema()) == []
    # what the terminal shows: one line per row, one per unavailable backend with its reason
    table = bench.format_backends(report)
    assert "keras" in table and "unavailable: no Keras model at hand" in table


def test_opencv_is_unavailable_when_it_runs_batch_1_but_not_batch_2(tmp_path):
    """OpenCV 4.11 ran the session TinyUNet at batch 1 and failed its Tile at batch 2, in the
    middle of the rounds; the runner now tries both before the rounds and says which failed.
    Here a graph that reshapes to a fixed batch of 1 around a Tile stands in for it (OpenCV 4.11
    and 5.1 both run it at batch 1 and refuse batch 2)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from converter.package import ModelPackage
    from tests.packages import write_bright_package

    size = 8
    package = ModelPackage.open(write_bright_package(tmp_path / "pkg", size=size))
    image, probability = (
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", size, size, 1])
        for name in ("image", "probability")
    )
    constants = [
        numpy_helper.from_array(np.array(values, np.int64), name)
        for name, values in (
            ("six", [1, size, 1, size, 1, 1]),
            ("ones", [1] * 6),
            ("back", [1, size, size, 1]),
        )
    ]
    nodes = [
        helper.make_node("Reshape", ["image", "six"], ["r"]),
        helper.make_node("Tile", ["r", "ones"], ["t"]),
        helper.make_node("Reshape", ["t", "back"], ["probability"]),
    ]
    graph = helper.make_graph(nodes, "batch-1-only", [image], [probability], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(package.onnx_path("fp32")))
    with pytest.raises(bench.Unavailable, match=r"^OpenCV DNN \S+ cannot run model\.onnx at batch 2: "):
        bench.open_runner("opencv", package, threads=1)


def test_one_model_against_another_on_the_same_images(line_package, slow_line_package, tmp_path):
    """``BACKEND@FOLDER`` runs a second package in the same interleaved rounds (the instance norm
    against BatchNorm); a package that takes another input is listed as unavailable, with why."""
    from converter.package import ModelPackage
    from tests.packages import write_bright_package

    other = write_bright_package(tmp_path / "wide", size=MODEL_SIZE * 2, model_id="test-bright-wide")
    slow = f"onnxruntime:fp32@{slow_line_package}"
    specs = ["onnxruntime:fp32", slow, f"onnxruntime:fp32@{other}", f"onnxruntime:fp32@{tmp_path / 'none'}"]
    report = bench.bench_backends(str(line_package), specs, [2], rounds=2, seconds=0.2, threads=1, quiet=True)
    assert [r["backend"] for r in report["rows"]] == specs[:2]
    assert report["rows"][1]["runs"] >= 2 and report["rows"][1]["ratio"] > 0
    reasons = {u["backend"]: u["reason"] for u in report["unavailable"]}
    assert f"the first package {MODEL_SIZE}x{MODEL_SIZE}x1 NHWC" in reasons[specs[2]]
    assert str(tmp_path / "none") in reasons[specs[3]]
    # the second row's runner ran the second package, not the first one again
    name, package = bench._on_package(slow, ModelPackage.open(line_package))
    assert (name, package.model_id) == ("onnxruntime:fp32", "test-bright-slow")
    assert bench.validate(report, bench.load_schema()) == []
    assert slow in bench.format_backends(report)


def test_the_line_end_to_end_with_a_near_free_graph(trained_package, tmp_path):
    """`lineside bench --pipeline --null` on one camera, one worker, batch 2: a short run whose
    JSON validates and whose cells carry every figure the issue asks for."""
    out = tmp_path / "line.json"
    argv = [sys.executable, "-m", "edge.cli", "bench", str(trained_package), "--null", "--cameras", "1"]
    argv += ["--workers", "1", "--batch", "2", "--seconds", "2", "--warmup", "1", "--rounds", "1"]
    argv += ["--fps", "25"]
    argv += ["--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert bench.validate(report, bench.load_schema()) == []
    pipe = report["pipeline"]
    assert pipe["graph"] == "near-free" and report["model_id"].endswith("-near-free")
    (cell,) = pipe["cells"]
    assert (cell["workers"], cell["batch"]) == (1, 2) and cell["decisions"] > 0
    assert cell["fps_per_camera"] == 25  # the offered rate asked for, not 1.5x the bare backend
    assert {"end_to_end", "infer", "queue"} <= set(cell["stages_ms"])
    assert cell["truth"]["judged"] >= 0
    procs = cell["processes"]
    if "unavailable" in procs:
        assert "pip install psutil" in procs["unavailable"]
    else:
        assert {"worker", "camera", "router", "collector"} <= set(procs)
        assert procs["worker"]["peak_rss_mib"] > 10
    assert "vs bare" in proc.stdout and "stage p50/p99 ms: " in proc.stdout and "queue " in proc.stdout


def test_memory_trend_is_the_least_squares_growth_per_minute():
    """A 10-minute run reports each process kind's RSS at the window's start and end and its
    growth per minute: a worker that leaks 1 MiB a minute shows +1.00."""
    res = bench._Resources()
    if res.psutil is None:
        pytest.skip("psutil is not installed")
    mib = 2**20
    res.series[1] = [(t, int((100 + t / 60) * mib)) for t in range(0, 601, 10)]
    res.series[2] = [(0.0, 50 * mib), (300.0, 50 * mib)]  # two samples: no trend
    first, last, slope = res.trend(1)
    assert (round(first), round(last)) == (100, 110) and slope == pytest.approx(1.0, abs=1e-3)
    assert res.trend(2) is None


def test_near_free_package_keeps_the_io(trained_package, tmp_path):
    from converter.package import ModelPackage

    free = ModelPackage.open(bench.near_free_package(trained_package, tmp_path / "free"))
    data = bench.sample_batch(free, 2)
    with bench.make_backend(free, "onnxruntime", "fp32", 1) as backend:
        out = backend.infer(data)
    assert out.shape == (2, free.manifest.input.height, free.manifest.input.width)
    assert float(out.max()) < 0.01  # sigmoid(x - 10): nothing is a defect


@pytest.fixture
def fakes(monkeypatch):
    return fake_trt.install(monkeypatch)[0]


def test_tensorrt_splits_h2d_compute_and_d2h_only_when_asked(fakes, tmp_path):
    from edge.backends.trt import TensorRTBackend

    backend = TensorRTBackend(_plan(tmp_path, L4), onnx_sha256="ab" * 32)
    x = np.random.default_rng(0).random((7, 8, 8, 1), dtype=np.float32)
    with backend:
        engine = backend._runner
        backend.infer(x)
        assert engine.stage_seconds == {}  # the line's path: no extra synchronization
        engine.time_stages = True
        np.testing.assert_array_equal(backend.infer(x), 2 * x[..., 0])  # same result, timed
        assert set(engine.stage_seconds) == {"h2d", "compute", "d2h"}
        assert all(v >= 0 for v in engine.stage_seconds.values())
        assert fakes.executions[-2:] == [4, 3]  # both chunks ran, each timed
