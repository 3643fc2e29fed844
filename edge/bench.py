"""`lineside bench`: backends side by side, and the whole line against the bare backend.

Every backend this box has (ONNX Runtime FP32/FP16/INT8, OpenVINO, OpenCV DNN, Keras
``predict``, TensorRT) runs the same images in interleaved rounds, so the ratios between
them hold on a busy machine far better than absolute figures do; the ones that cannot run
here are listed with the reason. ``--pipeline`` runs ``lineside run`` with synthetic cameras
per worker count and batch size and reports what the line adds: fps, drops by reason,
per-stage latency, CPU and memory per process kind, and its accuracy against the synthetic
truth. ``--null`` puts a near-free graph with the package's I/O in the model's place to
measure the plumbing alone. Reports: a terminal table, JSON (``edge/bench_schema.json``) and
a PNG plot.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from converter.package import ModelPackage
from converter.preprocessing import normalize
from edge.backends.base import Backend


def make_backend(package: ModelPackage, backend: str, precision: str, threads: int) -> Backend:
    if backend == "tensorrt":
        from converter.engine.select import select_engine
        from edge.backends.base import BackendError
        from edge.backends.trt import TensorRTBackend

        plan, why = select_engine(package)
        if plan is None:
            msg = f"no TensorRT engine usable here: {why}"
            raise BackendError(msg)
        return TensorRTBackend.for_package(package, plan)
    if backend == "openvino":  # in the precision this CPU runs fastest, gated or not: this only measures
        from converter import openvino_runtime as ovr
        from edge.backends.openvino import OpenVINOBackend

        chosen, _ = ovr.choose_precision(ovr.probe(), "CPU", package.has_precision("int8"))
        return OpenVINOBackend(package.onnx_path(ovr.GRAPHS[chosen]), "CPU", chosen, threads)
    from edge.backends.onnxrt import OnnxRuntimeBackend

    return OnnxRuntimeBackend(package.onnx_path(precision), threads=threads)


def sample_batch(package: ModelPackage, n: int, seed: int = 0) -> np.ndarray:
    """A batch of synthetic frames, preprocessed as the workers do."""
    from converter import synthetic

    m = package.manifest
    rng = np.random.default_rng(seed)
    frames = [
        synthetic.render(rng, (m.input.height, m.input.width), 1, defective=bool(i % 2))[0] for i in range(n)
    ]
    stacked = np.stack(frames)[..., None]
    if m.input.layout == "NCHW":
        stacked = stacked.transpose(0, 3, 1, 2)
    return normalize(stacked, m.normalization)


#: every backend ``lineside bench`` knows, in its default order (the first row is the ratios' base)
BACKENDS = (
    "onnxruntime:fp32",
    "onnxruntime:fp16",
    "onnxruntime:int8",
    "openvino",
    "opencv",
    "keras",
    "tensorrt",
)
#: latency figures reported per row, in this order
LATENCY_KEYS = ("min", "mean", "p50", "p90", "p95", "p99", "max")
SCHEMA_PATH = Path(__file__).with_name("bench_schema.json")


class Unavailable(Exception):
    """A backend cannot run here; the message says why (and how to get it)."""


# -- statistics -----------------------------------------------------------------------------------


def percentile(values, q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between the closest ranks: numpy's
    default method, written out so the bench's figures do not depend on a numpy default."""
    data = sorted(float(v) for v in values)
    if not data:
        msg = "percentile of no values"
        raise ValueError(msg)
    if not 0 <= q <= 100:
        msg = f"percentile {q} is outside 0..100"
        raise ValueError(msg)
    rank = (len(data) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def latency_stats(ms) -> dict[str, float]:
    """min, mean, p50, p90, p95, p99 and max of ``ms``."""
    values = [float(v) for v in ms]
    out = {"min": min(values), "mean": sum(values) / len(values)}
    for q in (50, 90, 95, 99):
        out[f"p{q}"] = percentile(values, q)
    out["max"] = max(values)
    return {k: out[k] for k in LATENCY_KEYS}


def machine_info() -> dict:
    """The CPU's model name, its cores and the load: what a reader needs to weigh the figures."""
    from converter.cpu import cpu_model

    model = cpu_model()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu": model,
        "cores": os.cpu_count() or 1,
        "load_1m": round(load[0], 2),
        "python": platform.python_version(),
    }


# -- backends -------------------------------------------------------------------------------------


class _Runner:
    """One backend as the bench drives it: ``infer`` a batch, ``stages`` for TensorRT's split."""

    def __init__(self, spec: str, describe: str, infer, close=lambda: None, stages=None) -> None:
        self.spec, self.describe, self.infer, self.close, self.stages = spec, describe, infer, close, stages


def _from_backend(spec: str, backend: Backend) -> _Runner:
    backend.activate()
    return _Runner(spec, backend.describe(), backend.infer, backend.deactivate)


def open_runner(spec: str, package: ModelPackage, threads: int, keras_path: str | None = None) -> _Runner:
    """``spec`` ready to run on ``package``; raises Unavailable with the reason when it cannot here."""
    from converter.errors import LinesideError

    name, _, precision = spec.partition(":")
    try:
        if name == "onnxruntime":
            precision = precision or "fp32"
            if precision not in ("fp32", "fp16", "int8"):
                raise Unavailable(f"unknown precision {precision!r}; use fp32, fp16 or int8")
            if not package.has_precision(precision):
                raise Unavailable(
                    f"the package has no {precision} graph; add it with "
                    f"`lineside export ... --precision {precision}`"
                )
            return _from_backend(spec, make_backend(package, "onnxruntime", precision, threads))
        if name == "openvino":
            try:
                import openvino  # noqa: F401
            except ImportError:
                raise Unavailable("OpenVINO is not installed: pip install 'lineside[openvino]'") from None
            return _from_backend(spec, make_backend(package, "openvino", "fp32", threads))
        if name == "opencv":
            return _opencv_runner(spec, package, threads)
        if name == "keras":
            return _keras_runner(spec, package, keras_path)
        if name == "tensorrt":
            try:
                import tensorrt  # noqa: F401
            except ImportError:
                raise Unavailable(
                    "TensorRT is not installed: pip install 'lineside[gpu-cu12]' (docs/gpu.md)"
                ) from None
            backend = make_backend(package, "tensorrt", "fp32", threads)
            runner = _from_backend(spec, backend)
            engine = backend._runner  # the EngineRunner: split each call into H2D, compute and D2H
            engine.time_stages = True
            runner.stages = lambda: dict(engine.stage_seconds)
            return runner
    except Unavailable:
        raise
    except (LinesideError, ImportError, OSError, RuntimeError) as exc:
        raise Unavailable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    raise Unavailable(f"unknown backend {spec!r}; known: {', '.join(BACKENDS)}")


def _opencv_runner(spec: str, package: ModelPackage, threads: int) -> _Runner:
    import cv2

    path = package.onnx_path("fp32")
    where = ""  # reading the graph
    try:
        net = cv2.dnn.readNetFromONNX(str(path))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        cv2.setNumThreads(threads or (os.cpu_count() or 1))
        m = package.manifest
        probe = np.zeros((1, m.input.height, m.input.width, m.input.channels), np.float32)
        if m.input.layout == "NCHW":
            probe = probe.transpose(0, 3, 1, 2).copy()
        # a graph OpenCV reads but cannot run fails here, not in the rounds; at a batch of 2 as
        # well, since OpenCV 4.11 runs a TinyUNet at batch 1 and fails its Tile at batch 2
        for batch in (1, 2):
            where = f" at batch {batch}"
            net.setInput(np.repeat(probe, batch, axis=0))
            net.forward()
    except cv2.error as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        why = f"OpenCV DNN {cv2.__version__} cannot run {path.name}{where}: {lines[-1][:200]}"
        raise Unavailable(why) from None

    def infer(batch: np.ndarray) -> np.ndarray:
        net.setInput(np.ascontiguousarray(batch))
        return net.forward()

    return _Runner(spec, f"opencv DNN {cv2.__version__} CPU ({path.name})", infer)


def _keras_runner(spec: str, package: ModelPackage, keras_path: str | None) -> _Runner:
    if keras_path is None:
        carried = [f for f in package.root.glob("*.keras")]
        if not carried:
            raise Unavailable("no Keras model at hand (the package carries none): pass --keras MODEL.keras")
        keras_path = str(carried[0])
    if not Path(keras_path).is_file():
        raise Unavailable(f"{keras_path} does not exist; pass --keras MODEL.keras")
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
    except ImportError:
        raise Unavailable("TensorFlow/Keras is not installed: pip install 'lineside[train]'") from None
    model = keras.models.load_model(keras_path, compile=False)

    def infer(batch: np.ndarray) -> np.ndarray:
        return model.predict(batch, batch_size=len(batch), verbose=0)

    return _Runner(spec, f"keras {keras.__version__} predict ({Path(keras_path).name})", infer)


# -- backends side by side ------------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": percentile(values, 50),
        "q1": percentile(values, 25),
        "q3": percentile(values, 75),
        "min": min(values),
        "max": max(values),
    }


def _on_package(spec: str, package: ModelPackage) -> tuple[str, ModelPackage]:
    """``BACKEND@FOLDER`` runs the backend on another package (one model against another, on
    the same images): that package, if its input is the first one's; plain specs, ``package``."""
    from converter.errors import LinesideError

    name, at, folder = spec.partition("@")
    if not at:
        return spec, package
    try:
        other = ModelPackage.open(folder)
    except LinesideError as exc:
        raise Unavailable(str(exc).splitlines()[0]) from None
    if other.manifest.input != package.manifest.input:
        a, b = package.manifest.input, other.manifest.input
        raise Unavailable(
            f"{folder} takes {b.height}x{b.width}x{b.channels} {b.layout}, the first package "
            f"{a.height}x{a.width}x{a.channels} {a.layout}; compare packages of one input"
        )
    return name, other


def bench_backends(
    package_dir: str,
    specs: list[str],
    batches: list[int],
    rounds: int = 5,
    seconds: float = 5.0,
    threads: int = 0,
    keras_path: str | None = None,
    quiet: bool = False,
) -> dict:
    """Every backend in ``specs`` on the same images, in interleaved rounds, per batch size.

    Each round runs every backend for ``seconds / rounds`` (at least one call), so a change of
    load hits all of them alike; the order alternates between rounds. A spec ``BACKEND@FOLDER``
    runs on the package in FOLDER instead (one model against another, e.g. the instance norm
    against BatchNorm). A row's img/s is the
    median over rounds, with its spread; its latencies are over every call.
    """
    package = ModelPackage.open(package_dir)
    say = (lambda *a: None) if quiet else print
    runners, unavailable = [], []
    for spec in specs:
        try:
            runner = open_runner(*_on_package(spec, package), threads, keras_path)
        except Unavailable as exc:
            unavailable.append({"backend": spec, "reason": str(exc)})
            continue
        runner.spec = spec
        runners.append(runner)
    machine = machine_info()
    rows: list[dict] = []
    try:
        for batch in batches:
            data = sample_batch(package, batch)
            for r in runners:
                r.infer(data)  # warm-up: the first run allocates and may compile
            per_round: dict[str, list[float]] = {r.spec: [] for r in runners}
            lat: dict[str, list[float]] = {r.spec: [] for r in runners}
            stages: dict[str, dict[str, list[float]]] = {r.spec: {} for r in runners}
            budget = seconds / max(rounds, 1)
            for rnd in range(max(rounds, 1)):
                for r in runners if rnd % 2 == 0 else runners[::-1]:
                    calls, start = 0, time.perf_counter()
                    while calls == 0 or time.perf_counter() - start < budget:
                        t0 = time.perf_counter()
                        r.infer(data)
                        lat[r.spec].append((time.perf_counter() - t0) * 1000)
                        if r.stages is not None:
                            for k, v in r.stages().items():
                                stages[r.spec].setdefault(k, []).append(v * 1000)
                        calls += 1
                    per_round[r.spec].append(batch * calls / (time.perf_counter() - start))
            for r in runners:
                spread = _spread(per_round[r.spec])
                row = {
                    "backend": r.spec,
                    "describe": r.describe,
                    "batch": batch,
                    "rounds": len(per_round[r.spec]),
                    "runs": len(lat[r.spec]),
                    "img_per_s": spread["median"],
                    "img_per_s_spread": spread,
                    "latency_ms": latency_stats(lat[r.spec]),
                }
                for k, v in stages[r.spec].items():  # TensorRT: median ms per call, as trtexec splits it
                    row[f"{k}_ms"] = percentile(v, 50)
                # the figures the line-side bench printed before: kept for scripts that read them
                row.update({f"p{q}_ms": row["latency_ms"][f"p{q}"] for q in (50, 90, 99)})
                rows.append(row)
            base = next((row for row in rows if row["batch"] == batch), None)
            for row in rows:
                if row["batch"] == batch:
                    row["ratio"] = row["img_per_s"] / base["img_per_s"]
    finally:
        for r in runners:
            r.close()
    machine["load_1m_end"] = machine_info()["load_1m"]
    inp = package.manifest.input
    report = {
        "schema_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "package": str(package_dir),
        "model_id": package.model_id,
        "input": f"{inp.height}x{inp.width}x{inp.channels}",
        "machine": machine,
        "rounds": rounds,
        "seconds": seconds,
        "rows": rows,
        "unavailable": unavailable,
        "pipeline": None,
    }
    say(format_backends(report))
    return report


def format_backends(report: dict) -> str:
    """The backends table as the terminal shows it."""
    m = report["machine"]
    # a BACKEND@FOLDER row is as wide as its folder
    w = max([18] + [len(row["backend"]) for row in report["rows"] + report["unavailable"]])
    lines = [
        f"model {report['model_id']}  input {report['input']}  on {m['cpu']} ({m['cores']} cores, "
        f"load {m['load_1m']}), {report['rounds']} interleaved rounds",
        f"{'backend':<{w}} {'batch':>5} {'img/s':>8} {'IQR':>15} {'vs 1st':>6} "
        + " ".join(f"{k:>7}" for k in LATENCY_KEYS)
        + "  (ms per call)",
    ]
    for r in report["rows"]:
        s = r["img_per_s_spread"]
        lines.append(
            f"{r['backend']:<{w}} {r['batch']:>5} {r['img_per_s']:>8.1f} {s['q1']:>7.1f}-{s['q3']:<7.1f} "
            f"{r['ratio']:>5.2f}x " + " ".join(f"{r['latency_ms'][k]:>7.1f}" for k in LATENCY_KEYS)
        )
        if "compute_ms" in r:
            lines.append(
                f"{'':<{w}} H2D {r['h2d_ms']:.2f} ms, compute {r['compute_ms']:.2f} ms, "
                f"D2H {r['d2h_ms']:.2f} ms"
            )
    for u in report["unavailable"]:
        lines.append(f"{u['backend']:<{w}} unavailable: {u['reason']}")
    return "\n".join(lines)


def bench_backend(
    package_dir: str,
    backend: str,
    precision: str,
    batches: list[int],
    seconds: float,
    threads: int,
    json_path: str | None = None,
) -> list[dict]:
    """One backend alone (``lineside bench --backend``); its rows. Raises when it cannot run."""
    from edge.backends.base import BackendError

    spec = f"onnxruntime:{precision}" if backend == "onnxruntime" else backend
    report = bench_backends(package_dir, [spec], batches, rounds=3, seconds=seconds, threads=threads)
    if report["unavailable"]:
        raise BackendError(f"{spec}: {report['unavailable'][0]['reason']}")
    if json_path:
        write_json(report, json_path)
    return report["rows"]


# -- reports --------------------------------------------------------------------------------------


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(instance, schema: dict, where: str = "$") -> list[str]:
    """Where ``instance`` breaks ``schema``: a checker for the JSON Schema subset the bench's
    schema uses (type, required, properties, additionalProperties, items, enum, minimum,
    anyOf), so the base install needs no jsonschema."""
    errors: list[str] = []
    if "anyOf" in schema:
        if all(validate(instance, s, where) for s in schema["anyOf"]):
            errors.append(f"{where}: matches none of its allowed forms")
        return errors
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "null": lambda v: v is None,
        }
        if not any(checks[k](instance) for k in kinds):
            return [f"{where}: {type(instance).__name__} is not {'/'.join(kinds)}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{where}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(instance, (int, float)) and instance < schema["minimum"]:
        errors.append(f"{where}: {instance} is below {schema['minimum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{where}: {key!r} is missing")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in props:
                errors += validate(value, props[key], f"{where}.{key}")
            elif extra is False:
                errors.append(f"{where}: {key!r} is not in the schema")
            elif isinstance(extra, dict):
                errors += validate(value, extra, f"{where}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors += validate(item, schema["items"], f"{where}[{i}]")
    return errors


def write_json(report: dict, path: str) -> None:
    """Write ``report`` after checking it against the shipped schema (a mismatch is a bug here)."""
    errors = validate(report, load_schema())
    if errors:
        msg = f"bench report does not match {SCHEMA_PATH.name}: {'; '.join(errors[:5])}"
        raise ValueError(msg)
    Path(path).write_text(json.dumps(report, indent=2))


def write_plot(report: dict, path: str) -> bool:
    """Backends (img/s with their IQR) and, with --pipeline, the line's grid; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed (pip install matplotlib); no plot written")
        return False
    pipe = report.get("pipeline")
    fig, axes = plt.subplots(1, 2 if pipe else 1, figsize=(13 if pipe else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    rows = report["rows"]
    labels = [f"{r['backend']}\nb{r['batch']}" for r in rows]
    med = [r["img_per_s"] for r in rows]
    err = [
        [r["img_per_s"] - r["img_per_s_spread"]["q1"] for r in rows],
        [r["img_per_s_spread"]["q3"] - r["img_per_s"] for r in rows],
    ]
    ax.bar(range(len(rows)), med, yerr=err, capsize=3, color="#4a7ab8")
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("img/s (median, IQR)")
    ax.set_title(f"{report['model_id']} {report['input']}, bare backends")
    if pipe:
        ax = axes[0][1]
        for batch in sorted({c["batch"] for c in pipe["cells"]}):
            cells = [c for c in pipe["cells"] if c["batch"] == batch]
            ax.plot(
                [c["workers"] for c in cells],
                [c["img_per_s"] for c in cells],
                "o-",
                label=f"line, batch {batch}",
            )
            ax.axhline(pipe["bare"][str(batch)]["img_per_s"], ls="--", lw=0.8, color=ax.lines[-1].get_color())
        ax.set_xticks(sorted({c["workers"] for c in pipe["cells"]}))
        ax.set_xlabel("workers")
        ax.set_ylabel("decisions/s (dashed: bare backend)")
        ax.set_title(f"the line, {pipe['graph']} graph")
        ax.legend(fontsize=7)
    m = report["machine"]
    fig.suptitle(f"{m['cpu']}, {m['cores']} cores, load {m['load_1m']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def near_free_package(source: str | Path, out: str | Path) -> Path:
    """A copy of ``source``'s manifest around a near-free graph with the same I/O: sigmoid(x - 10)
    (channels averaged when the output has fewer). It measures what the line costs without the model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from converter.package import sha256_file

    package = ModelPackage.open(source)
    model = onnx.load(str(package.onnx_path("fp32")), load_external_data=False)
    inp, outp = model.graph.input[0], model.graph.output[0]
    m = package.manifest
    axis = 1 if m.input.layout == "NCHW" else 3
    # The constant has the input's rank: ONNX Runtime's CPU Sub with a rank-0 constant takes a
    # slow broadcast path (4.5x the whole graph's time at 512x512, ORT 1.32 on an EPYC).
    rank = len(inp.type.tensor_type.shape.dim)
    ten = numpy_helper.from_array(np.full((1,) * rank, 10.0, np.float32), "ten")
    nodes = [helper.make_node("Cast", [inp.name], ["xf"], to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("Sub", ["xf", "ten"], ["shifted"]))
    last = "shifted"
    if m.input.channels != m.output.channels:
        nodes.append(helper.make_node("ReduceMean", ["shifted"], ["mean"], axes=[axis], keepdims=1))
        last = "mean"
    nodes.append(helper.make_node("Sigmoid", [last], [outp.name]))
    graph = helper.make_graph(nodes, "near-free", [inp], [outp], initializer=[ten])
    free = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    free.ir_version = 8
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(free, str(out / "model.onnx"))
    m.model_id = f"{m.model_id}-near-free"
    m.files = {"fp32": "model.onnx"}
    m.files_sha256 = {"model.onnx": sha256_file(out / "model.onnx")}
    m.gates = {}
    m.save(out)
    ModelPackage.open(out).check_graph_io("fp32")
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipeline_config(
    package_dir: str, cameras: int, workers: int, max_batch: int, threads: int, fps: float
) -> dict:
    """A saturated line: synthetic cameras offering more frames than it can take, no sinks.

    Cameras use the ``latest`` policy, so the end-to-end latency is that of a
    saturated line that always inspects the freshest frame, not the age of a backlog.
    The status goes out every second: the bench reads the drops, the truth score and the
    processes' ids from it.
    """
    package = ModelPackage.open(package_dir)
    size = package.manifest.input.height
    return {
        "name": "bench",
        "model": {"package": str(Path(package_dir).resolve()), "backend": "onnxruntime", "threads": threads},
        "cameras": [
            {
                "id": f"cam{i + 1}",
                "source": "synthetic",
                "fps": fps,
                "policy": "latest",
                "max_age_ms": 0,
                "options": {"size": size, "defect_rate": 0.3, "seed": i},
            }
            for i in range(cameras)
        ],
        "workers": {"count": workers, "max_batch": max_batch, "max_wait_ms": 20},
        "endpoints": {"publish": f"tcp://127.0.0.1:{_free_port()}"},
        "sinks": {"decision_log": "", "ng_store": ""},
        "metrics": {"port": 0},
        "status_interval_s": 1,
    }


class _Resources:
    """CPU % and peak RSS per process kind (camera, worker, router, collector, supervisor)."""

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:
            self.psutil = None
            return
        self.psutil = psutil
        self.procs: dict[int, tuple[str, object]] = {}
        self.cpu0: dict[int, float] = {}
        self.peak: dict[int, int] = {}
        #: (seconds into the window, RSS bytes) per process, for the memory trend of a long run
        self.series: dict[int, list[tuple[float, int]]] = {}
        self.t0 = 0.0

    def track(self, pids: dict[str, int]) -> None:
        if self.psutil is None:
            return
        for role, pid in pids.items():
            if pid in self.procs:
                continue
            try:
                self.procs[pid] = (role.split(":")[0], self.psutil.Process(pid))
            except self.psutil.Error:
                continue

    def _cpu(self, proc) -> float:
        t = proc.cpu_times()
        return t.user + t.system

    def start(self) -> None:
        """The measurement window opens: CPU time counts from here."""
        if self.psutil is None:
            return
        self.t0 = time.monotonic()
        for pid, (_, proc) in self.procs.items():
            with contextlib.suppress(self.psutil.Error):
                self.cpu0[pid] = self._cpu(proc)

    def sample(self) -> None:
        if self.psutil is None:
            return
        now = time.monotonic()
        for pid, (_, proc) in self.procs.items():
            with contextlib.suppress(self.psutil.Error):
                rss = proc.memory_info().rss
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
                if self.t0:
                    self.series.setdefault(pid, []).append((now - self.t0, rss))

    def trend(self, pid: int) -> tuple[float, float, float] | None:
        """(first, last RSS in MiB, least-squares growth in MiB/min) over the window; None
        with fewer than 3 samples."""
        points = self.series.get(pid, [])
        if len(points) < 3:
            return None
        t = np.array([p[0] for p in points]) / 60
        mib = np.array([p[1] for p in points]) / 2**20
        slope = float(np.polyfit(t, mib, 1)[0]) if np.ptp(t) > 0 else 0.0
        return float(mib[0]), float(mib[-1]), slope

    def report(self) -> dict:
        if self.psutil is None:
            return {"unavailable": "psutil is not installed: pip install psutil"}
        span = max(time.monotonic() - self.t0, 1e-9)
        kinds: dict[str, dict] = {}
        for pid, (kind, proc) in self.procs.items():
            k = kinds.setdefault(kind, {"processes": 0, "cpu_percent": 0.0, "peak_rss_mib": 0.0})
            k["processes"] += 1
            with contextlib.suppress(self.psutil.Error):
                k["cpu_percent"] += 100 * (self._cpu(proc) - self.cpu0.get(pid, 0.0)) / span
            k["peak_rss_mib"] = max(k["peak_rss_mib"], self.peak.get(pid, 0) / 2**20)
            trend = self.trend(pid)
            # per kind, the process whose memory grew fastest: a leak shows in one worker
            if trend is not None and trend[2] >= k.get("rss_growth_mib_per_min", -math.inf):
                k["rss_start_mib"], k["rss_end_mib"], k["rss_growth_mib_per_min"] = trend
        return kinds


def measure_pipeline(cfg: dict, seconds: float, warmup_s: float = 5.0) -> dict:
    """Run `lineside run` on ``cfg`` and measure it on its publish socket after warm-up: decisions/s,
    drops by reason, per-stage and end-to-end latency, accuracy against the synthetic truth, and
    (with psutil) CPU % and peak RSS per process kind."""
    import subprocess
    import sys
    import tempfile

    import yaml
    import zmq

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg))
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"result.")
        sub.setsockopt(zmq.SUBSCRIBE, b"status")
        sub.setsockopt(zmq.RCVHWM, 100000)
        sub.connect(cfg["endpoints"]["publish"])
        argv = [sys.executable, "-m", "edge.cli", "run", "--config", str(path)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        res = _Resources()
        res.track({"supervisor": proc.pid})
        stages: dict[str, list[float]] = {}
        first = None
        count = 0
        opened = None  # the first status inside the window, and the last one
        status_first = status_last = None
        try:
            # the line's start (model load, first frames) may take a minute on a loaded box
            deadline = time.monotonic() + 120 + warmup_s + seconds
            while time.monotonic() < deadline and proc.poll() is None:
                if not sub.poll(200):
                    continue
                topic, header = sub.recv_multipart()[:2]
                now = time.monotonic()
                if topic == b"status":
                    status = json.loads(header)
                    res.track(status.get("processes", {}))
                    res.sample()
                    if first is not None and now - first >= warmup_s:
                        status_first = status_first or status
                        status_last = status
                    continue
                first = first or now
                if now - first < warmup_s:
                    continue
                if opened is None:
                    opened = now
                    res.start()
                if now - first >= warmup_s + seconds:
                    break
                count += 1
                for stage, ms in json.loads(header)["latency_ms"].items():
                    stages.setdefault(stage, []).append(ms)
        finally:
            resources = res.report()
            proc.terminate()
            err = proc.communicate(timeout=60)[1]
            sub.close(0)
            ctx.term()
        if not stages.get("end_to_end"):
            msg = f"the pipeline decided nothing; its log:\n{err[-2000:]}"
            raise RuntimeError(msg)
        drops, scored = {}, {}
        if status_first is not None and status_last is not None:
            before = status_first["totals"].get("dropped_by_reason", {})
            for reason, n in status_last["totals"].get("dropped_by_reason", {}).items():
                if n - before.get(reason, 0):
                    drops[reason] = n - before.get(reason, 0)
            for key, n in status_last.get("vs_truth", {}).items():
                scored[key] = n - status_first.get("vs_truth", {}).get(key, 0)
        judged = sum(scored.values())
        right = scored.get("defective:FAIL", 0) + scored.get("clean:PASS", 0)
        e2e = stages["end_to_end"]
        return {
            "img_per_s": count / seconds,
            "decisions": count,
            "e2e_p50_ms": percentile(e2e, 50),
            "e2e_p99_ms": percentile(e2e, 99),
            "stages_ms": {
                k: {q: percentile(v, int(q[1:])) for q in ("p50", "p90", "p99")} for k, v in stages.items()
            },
            "drops": drops,
            "truth": {"judged": judged, "accuracy": right / judged if judged else None, "counts": scored},
            "processes": resources,
        }


def bench_pipeline(
    package_dir: str,
    cameras: int,
    workers: list[int],
    batches: list[int] | int,
    seconds: float,
    threads: int,
    json_path: str | None = None,
    null: bool = False,
    backend: str = "onnxruntime",
    rounds: int = 3,
    warmup_s: float = 5.0,
    plot_path: str | None = None,
    fps: float = 0.0,
) -> dict:
    """The whole line against the bare backend, per worker count and batch size, in one run.

    With ``null`` the package's graph is replaced by a near-free one with the same I/O: what
    is left is the line's own cost (transport, normalization, decisions, accounting). ``fps``
    per camera; 0 offers 1.5x what the bare backend takes (a saturated line). A line offered
    far less than it takes measures the transport hop: its ``queue`` stage is then the time from
    the camera's send to the worker's receipt, with no backlog in it.
    """
    import tempfile

    batches = [batches] if isinstance(batches, int) else list(batches)
    with tempfile.TemporaryDirectory() as tmp:
        if null:
            package_dir = str(near_free_package(package_dir, Path(tmp) / "near-free"))
        spec = "onnxruntime:fp32" if backend == "onnxruntime" else backend
        print(f"== bare backend ({spec}), batches {', '.join(map(str, batches))}")
        report = bench_backends(package_dir, [spec], batches, rounds, min(seconds, 10.0), threads)
        if report["unavailable"]:
            msg = f"{spec}: {report['unavailable'][0]['reason']}"
            raise RuntimeError(msg)
        bare = {str(r["batch"]): r for r in report["rows"]}
        cells = []
        print(
            f"== the line: {cameras} synthetic camera(s), latest; "
            f"{seconds:.0f} s after {warmup_s:.0f} s warm-up"
        )
        print(
            f"{'workers':>7} {'batch':>5} {'img/s':>8} {'vs bare':>8} {'e2e p50':>8} {'e2e p99':>8} "
            f"{'accuracy':>8}  drops, CPU % / peak RSS per process kind"
        )
        for batch in batches:
            # Offer 1.5x what the bare backend can take: the line is saturated, but the cameras do
            # not spin (an unthrottled synthetic camera would eat the cores the workers need).
            offered = fps or round(float(1.5 * bare[str(batch)]["img_per_s"] / cameras), 1)
            for n in workers:
                # Split the cores between workers so they do not fight over them.
                per_worker = threads or max(1, (os.cpu_count() or 1) // n)
                cfg = pipeline_config(package_dir, cameras, n, batch, per_worker, offered)
                cfg["model"]["backend"] = backend
                cell = measure_pipeline(cfg, seconds, warmup_s)
                cell.update(
                    workers=n,
                    batch=batch,
                    fps_per_camera=offered,
                    ratio_vs_bare=cell["img_per_s"] / bare[str(batch)]["img_per_s"],
                )
                cells.append(cell)
                print(format_cell(cell))
                print(format_stages(cell))
        report["pipeline"] = {
            "graph": "near-free" if null else "model",
            "backend": backend,
            "cameras": cameras,
            "seconds": seconds,
            "warmup_s": warmup_s,
            "bare": {k: {"img_per_s": v["img_per_s"]} for k, v in bare.items()},
            "cells": cells,
        }
        report["machine"]["load_1m_end"] = machine_info()["load_1m"]
        if json_path:
            write_json(report, json_path)
        if plot_path:
            write_plot(report, plot_path)
    return report


def format_stages(c: dict) -> str:
    """The stages' p50/p99 and, over a window long enough to show a trend, each process kind's
    memory at its start and end and its growth per minute."""
    stages = ", ".join(
        f"{k} {v['p50']:.1f}/{v['p99']:.1f}" for k, v in c["stages_ms"].items() if k != "end_to_end"
    )
    out = f"{'':>14}stage p50/p99 ms: {stages}"
    trends = [
        f"{kind} {v['rss_start_mib']:.0f}->{v['rss_end_mib']:.0f} MiB "
        f"({v['rss_growth_mib_per_min']:+.2f} MiB/min)"
        for kind, v in sorted(c["processes"].items())
        if "rss_growth_mib_per_min" in v
    ]
    if trends:
        out += f"\n{'':>14}memory over the window (fastest-growing process per kind): {', '.join(trends)}"
    return out


def format_cell(c: dict) -> str:
    acc = c["truth"]["accuracy"]
    drops = ", ".join(f"{k} {v}" for k, v in c["drops"].items()) or "no drops"
    procs = c["processes"]
    if "unavailable" in procs:
        res = procs["unavailable"]
    else:
        res = ", ".join(
            f"{k}{'' if v['processes'] == 1 else ' x' + str(v['processes'])} "
            f"{v['cpu_percent']:.0f}%/{v['peak_rss_mib']:.0f}MiB"
            for k, v in sorted(procs.items())
        )
    return (
        f"{c['workers']:>7} {c['batch']:>5} {c['img_per_s']:>8.1f} {c['ratio_vs_bare']:>7.2f}x "
        f"{c['e2e_p50_ms']:>6.0f}ms {c['e2e_p99_ms']:>6.0f}ms "
        f"{'-' if acc is None else format(acc, '.3f'):>8}  {drops}; {res}"
    )
