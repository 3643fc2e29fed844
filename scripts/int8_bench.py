"""FP32 against the INT8 Q/DQ graphs in ONNX Runtime on the CPU, side by side in one run.

For each INT8 target (converter/int8.py: ``tensorrt``, ``onnxruntime``) the package's FP32 graph
is calibrated and gated as ``lineside export --precision int8`` does (and timed even if its gate
fails, which the export would refuse), then every graph
runs the same batch in interleaved rounds through the line's ONNX Runtime backend (its session
options), and the median time per batch gives img/s and the ratio to FP32. On a shared machine
the ratios hold better than the absolute figures. Usage:

    PYTHONPATH=. python scripts/int8_bench.py PACKAGE --data DATASET [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def interleaved(runners: dict, rounds: int, repeats: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each runner (name -> no-argument callable), one runner after the other
    in each round, so that a busy spell of the machine hits every runner alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():  # warm-up: first-call allocations and thread start
        run()
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(repeats):
                run()
            times[name].append((time.perf_counter() - start) / repeats)
    return times


def ratios(times: dict[str, list[float]], batch: int) -> list[dict]:
    """One row per runner: median img/s, the ratio of its speed to the first runner's, spread."""
    first = float(np.median(next(iter(times.values()))))
    rows = []
    for name, seconds in times.items():
        median = float(np.median(seconds))
        rows.append(
            {
                "graph": name,
                "img_s": batch / median,
                "vs_first": first / median,
                "min_s": min(seconds),
                "max_s": max(seconds),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    import onnx

    from converter import onnx_graph
    from converter.gate import INT8_BOUNDS, run_gate
    from converter.int8 import TARGETS, quantize
    from converter.package import ModelPackage
    from converter.preprocessing import normalize
    from converter.samples import load_gate_and_calibration
    from edge.backends.onnxrt import OnnxRuntimeBackend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--data", required=True, help="data set for the gate and the calibration")
    parser.add_argument("--targets", default=",".join(TARGETS), help="INT8 targets to compare")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (0: every core)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=32, help="gate and calibration images, each")
    args = parser.parse_args(argv)

    package = ModelPackage.open(args.package)
    m = package.manifest
    gate_set, calib_set = load_gate_and_calibration(
        args.data,
        m.input.height,
        m.input.width,
        m.input.channels,
        gate=args.samples,
        calibration=args.samples,
        classes=m.dataset.get("classes"),
    )
    images = normalize(gate_set.images, m.normalization)
    fp32 = onnx.load(str(package.onnx_path("fp32")))
    graphs = {"fp32": package.onnx_path("fp32")}
    with tempfile.TemporaryDirectory(prefix="lineside-int8-bench-") as tmp:
        for target in args.targets.split(","):
            # timed even when its gate fails, so the layouts' speeds can still be compared
            model = quantize(fp32, normalize(calib_set.images, m.normalization), target=target)
            name = f"int8 {target}"
            graphs[name] = Path(tmp) / f"{target}.onnx"
            onnx.save(model, str(graphs[name]))
            report = run_gate(
                onnx_graph.session(graphs["fp32"]),
                onnx_graph.session(graphs[name]),
                images,
                name=name,
                threshold=m.threshold,
                min_defect_area=m.min_defect_area,
                bounds=INT8_BOUNDS,
                names=gate_set.names,
            )
            print(report.summary())
        batch = np.resize(images, (args.batch, *images.shape[1:]))
        backends = {name: OnnxRuntimeBackend(path, threads=args.threads) for name, path in graphs.items()}
        for backend in backends.values():
            backend.activate_impl()
        runners = {name: (lambda b=b: b.infer_impl(batch)) for name, b in backends.items()}
        times = interleaved(runners, args.rounds)
    print(f"batch {args.batch}, {args.threads or 'all'} threads, {args.rounds} interleaved rounds (median)")
    for row in ratios(times, args.batch):
        print(
            f"{row['graph']:<22} {row['img_s']:7.1f} img/s  {row['vs_first']:5.2f}x FP32  "
            f"({row['min_s']:.3f}-{row['max_s']:.3f} s/batch)"
        )
    return 0


if __name__ == "__main__":
    from converter.errors import LinesideError

    try:
        sys.exit(main())
    except (LinesideError, ValueError) as exc:  # a wrong package, data set or target: one line
        sys.exit(f"int8_bench: error: {exc}")
