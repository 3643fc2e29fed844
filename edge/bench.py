"""`lineside bench`: throughput and latency of the bare backend on a model package.

Figures are measured side by side in one run (one line per batch size), so the
ratios between batch sizes hold even on a busy machine better than absolute
numbers do.
"""

from __future__ import annotations

import json
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
        from edge.backends.trt.runner import TensorRTBackend

        plan, why = select_engine(package)
        if plan is None:
            msg = f"no TensorRT engine usable here: {why}"
            raise BackendError(msg)
        return TensorRTBackend(plan)
    from edge.backends.onnxrt.runner import OnnxRuntimeBackend

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
