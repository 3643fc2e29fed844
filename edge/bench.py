"""`lineside bench`: throughput and latency of the bare backend on a model package.

Figures are measured side by side in one run (one line per batch size), so the
ratios between batch sizes hold even on a busy machine better than absolute
numbers do.
"""

from __future__ import annotations

import json
import os
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


def bench_backend(
    package_dir: str,
    backend: str,
    precision: str,
    batches: list[int],
    seconds: float,
    threads: int,
    json_path: str | None = None,
) -> list[dict]:
    package = ModelPackage.open(package_dir)
    rows = []
    with make_backend(package, backend, precision, threads) as runner:
        print(
            f"backend: {runner.describe()}  model: {package.model_id}  "
            f"input: {package.manifest.input.height}x{package.manifest.input.width}"
        )
        print(f"{'batch':>5} {'img/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'runs':>5}")
        for batch in batches:
            data = sample_batch(package, batch)
            runner.infer(data)  # warm-up: first run allocates and may compile
            times = []
            start = time.perf_counter()
            while time.perf_counter() - start < seconds or len(times) < 3:
                runner.infer(data)
                times.append(runner.inference_time)
            t = np.array(times) * 1000
            row = {
                "batch": batch,
                "img_per_s": batch * len(times) / (t.sum() / 1000),
                "p50_ms": float(np.percentile(t, 50)),
                "p90_ms": float(np.percentile(t, 90)),
                "p99_ms": float(np.percentile(t, 99)),
                "runs": len(times),
            }
            rows.append(row)
            print(
                f"{batch:>5} {row['img_per_s']:>8.1f} {row['p50_ms']:>8.1f} {row['p90_ms']:>8.1f} "
                f"{row['p99_ms']:>8.1f} {row['runs']:>5}"
            )
    if len(rows) > 1:
        base = rows[0]["img_per_s"]
        print(
            f"throughput vs batch {rows[0]['batch']}: "
            + ", ".join(f"b{r['batch']}={r['img_per_s'] / base:.2f}x" for r in rows[1:])
        )
    if json_path:
        Path(json_path).write_text(
            json.dumps({"backend": backend, "precision": precision, "rows": rows}, indent=2)
        )
    return rows


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
        "status_interval_s": 3600,
    }


def measure_pipeline(cfg: dict, seconds: float, warmup_s: float = 5.0) -> dict:
    """Run `lineside run` on ``cfg`` and count decisions on its publish socket after warm-up."""
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
        sub.setsockopt(zmq.RCVHWM, 100000)
        sub.connect(cfg["endpoints"]["publish"])
        argv = [sys.executable, "-m", "edge.cli", "run", "--config", str(path)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        e2e: list[float] = []
        first = None
        count = 0
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if not sub.poll(200):
                    continue
                _, header = sub.recv_multipart()[:2]
                now = time.monotonic()
                first = first or now
                if now - first < warmup_s:
                    continue
                if now - first >= warmup_s + seconds:
                    break
                count += 1
                e2e.append(json.loads(header)["latency_ms"]["end_to_end"])
        finally:
            proc.terminate()
            err = proc.communicate(timeout=60)[1]
            sub.close(0)
            ctx.term()
        if not e2e:
            msg = f"the pipeline decided nothing; its log:\n{err[-2000:]}"
            raise RuntimeError(msg)
        return {
            "img_per_s": count / seconds,
            "e2e_p50_ms": float(np.percentile(e2e, 50)),
            "e2e_p99_ms": float(np.percentile(e2e, 99)),
        }


def bench_pipeline(
    package_dir: str,
    cameras: int,
    workers: list[int],
    max_batch: int,
    seconds: float,
    threads: int,
    json_path: str | None = None,
) -> dict:
    """The whole line against the bare backend, side by side in one run."""
    print(f"== bare backend, batch {max_batch}")
    bare = bench_backend(package_dir, "onnxruntime", "fp32", [max_batch], min(seconds, 10.0), threads)[0]
    rows = []
    # Offer 1.5x what the bare backend can take: the line is saturated, but the cameras do
    # not spin (an unthrottled synthetic camera would eat the cores the workers need).
    fps = round(float(1.5 * bare["img_per_s"] / cameras), 1)
    print(f"== pipeline: {cameras} synthetic camera(s) at {fps} fps, latest; {seconds:.0f} s after warm-up")
    print(f"{'workers':>7} {'img/s':>8} {'vs bare':>8} {'e2e p50':>9} {'e2e p99':>9}")
    for n in workers:
        # Split the cores between workers so they do not fight over them.
        per_worker = threads or max(1, (os.cpu_count() or 1) // n)
        row = measure_pipeline(pipeline_config(package_dir, cameras, n, max_batch, per_worker, fps), seconds)
        row.update(workers=n, ratio_vs_bare=row["img_per_s"] / bare["img_per_s"])
        rows.append(row)
        print(
            f"{n:>7} {row['img_per_s']:>8.1f} {row['ratio_vs_bare']:>7.2f}x "
            f"{row['e2e_p50_ms']:>7.0f}ms {row['e2e_p99_ms']:>7.0f}ms"
        )
    out = {"bare": bare, "pipeline": rows, "cameras": cameras, "max_batch": max_batch}
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2))
    return out
