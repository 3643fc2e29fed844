"""The line's own overhead: a line of 2 looping folder cameras (512x512 PNGs), 2 workers and the
decision log on, with the near-free graph of ``PACKAGE`` (sigmoid(x - 10), same I/O, at 512x512).

For each round and each source tree it runs ``lineside run`` from that tree and measures, over a
steady window after the first decision: decisions/s (counted in the decision log by
``decided_ts``), CPU ms per decision of each line process (``/proc``) and their RSS. Trees run
interleaved, so a before/after compares like with like on a busy box. Linux only.

    python scripts/line_overhead.py PACKAGE [--tree DIR ...] [--rounds 3] [--work DIR]

``--tree`` defaults to this checkout; pass two (``git worktree add /tmp/base main``) to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

CONFIG = """name: overhead
model: {{package: {package}, backend: onnxruntime}}
cameras:
  - {{id: cam1, source: folder, fps: 0, policy: lossless, options: {{path: {a}, loop: true}}}}
  - {{id: cam2, source: folder, fps: 0, policy: lossless, options: {{path: {b}, loop: true}}}}
workers: {{count: 2, max_batch: 8, max_wait_ms: 20}}
sinks: {{decision_log: runs/decisions.sqlite, ng_store: ""}}
metrics: {{port: 0}}
status_interval_s: 5
"""
TICK = os.sysconf("SC_CLK_TCK")


def prepare(package: str, work: Path, side: int = 512) -> Path:
    """The near-free package at ``side`` x ``side``, 2 folders of 16 PNGs, and the line config."""
    import cv2
    import onnx

    from converter.package import sha256_file
    from edge.bench import near_free_package

    free = near_free_package(package, work / "near-free")
    model = onnx.load(str(free / "model.onnx"))
    for value in (model.graph.input[0], model.graph.output[0]):  # elementwise: any size runs
        dims = value.type.tensor_type.shape.dim
        spatial = (2, 3) if len(dims) == 4 and dims[1].dim_value in (1, 3) else (1, 2)
        for i in spatial:
            dims[i].dim_value = side
    onnx.save(model, str(free / "model.onnx"))
    manifest = json.loads((free / "manifest.json").read_text())
    manifest["input"]["height"] = manifest["input"]["width"] = side
    manifest["files_sha256"] = {"model.onnx": sha256_file(free / "model.onnx")}
    (free / "manifest.json").write_text(json.dumps(manifest, indent=2))
    rng = np.random.default_rng(0)
    for cam in ("a", "b"):
        folder = work / f"frames_{cam}"
        folder.mkdir(exist_ok=True)
        for i in range(16):
            noise = rng.integers(0, 255, (side, side), np.uint8)
            cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.GaussianBlur(noise, (9, 9), 3))
    config = work / "line.yaml"
    config.write_text(CONFIG.format(package=free, a=work / "frames_a", b=work / "frames_b"))
    return config


def descendants(root: int) -> list[int]:
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        with contextlib.suppress(OSError):
            stack += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return pids


def sample(root: int) -> dict[int, tuple[float, int]]:
    """pid -> (CPU seconds, RSS MiB) of ``root`` and its descendants."""
    out = {}
    for pid in descendants(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        rss = next((int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS")), 0)
        out[pid] = ((int(stat[11]) + int(stat[12])) / TICK, rss)
    return out


def run_once(tree: Path, config: Path, work: Path, warm_s: float, window_s: float) -> dict:
    db = work / "runs" / "decisions.sqlite"
    subprocess.run(["rm", "-rf", str(work / "runs")], check=True)
    summary = work / "summary.json"
    cmd = [sys.executable, "-m", "edge.cli", "run", "--config", str(config), "--duration", "300"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    line = subprocess.Popen(
        [*cmd, "--summary", str(summary), "-q"],
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if sqlite3.connect(db).execute("select count(*) from decisions").fetchone()[0]:
                    break
            except sqlite3.Error:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit(f"{tree}: no decision within 120 s; run the config by hand: {' '.join(cmd)}")
        time.sleep(warm_s)
        t1, s1, l1 = time.time(), sample(line.pid), os.getloadavg()[0]
        time.sleep(window_s)
        t2, s2, l2 = time.time(), sample(line.pid), os.getloadavg()[0]
    finally:
        line.send_signal(signal.SIGINT)
        line.wait(120)
    n = (
        sqlite3.connect(db)
        .execute("select count(*) from decisions where decided_ts between ? and ?", (t1, t2))
        .fetchone()[0]
    )
    s = json.loads(summary.read_text())
    names = {pid: name for name, pid in s["processes"].items()} | {line.pid: "supervisor"}
    cpu = {names.get(p, "other"): 1000 * (s2[p][0] - s1.get(p, (0, 0))[0]) / max(n, 1) for p in s2}
    return {
        "decisions_per_s": round(n / (t2 - t1), 1),
        "cpu_ms_per_decision": round(sum(cpu.values()), 2),
        "cpu_ms_by_process": {k: round(v, 2) for k, v in sorted(cpu.items()) if v >= 0.01},
        "rss_mib": {names[p]: [s1.get(p, (0, 0))[1], s2[p][1]] for p in s2 if p in names},
        "load": round((l1 + l2) / 2, 1),
        "dropped": s["totals"]["dropped_by_reason"],
        "lost": s["lost"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", help="any model package: its I/O shapes the near-free graph")
    ap.add_argument("--tree", action="append", type=Path, help="a lineside checkout to run (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warm", type=float, default=6.0, help="seconds after the first decision")
    ap.add_argument("--window", type=float, default=10.0, help="seconds measured")
    ap.add_argument("--work", type=Path, help="folder for the package, frames and runs (default: a temp one)")
    args = ap.parse_args()
    trees = [t.resolve() for t in args.tree or [ROOT]]
    work = args.work or Path(tempfile.mkdtemp(prefix="lineside-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    config = prepare(args.package, work)
    rows: dict[str, list[dict]] = {str(t): [] for t in trees}
    for r in range(args.rounds):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            row = run_once(tree, config, work, args.warm, args.window)
            rows[str(tree)].append(row)
            print(json.dumps({"round": r, "tree": str(tree), **row}), flush=True)
    for tree, runs in rows.items():
        rate = statistics.median(x["decisions_per_s"] for x in runs)
        cpu = statistics.median(x["cpu_ms_per_decision"] for x in runs)
        print(f"{tree}: median {rate:.0f} decisions/s, {cpu:.2f} CPU ms/decision over {len(runs)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
