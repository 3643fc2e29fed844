"""End to end: the daemon as a subprocess, synthetic cameras injecting known
defects, a model trained by the project's own code, results over real ZeroMQ."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from converter.package import ModelPackage
from tests.conftest import MODEL_SIZE
from tests.edge.daemon import check_ledger, finish, line_config, start_line, synthetic_camera

pytestmark = pytest.mark.slow


def score(results: list[dict]) -> dict[str, int]:
    """Decisions against the ground truth each synthetic frame carried."""
    counts = {"defective": 0, "defective_fail": 0, "clean": 0, "clean_pass": 0}
    for r in results:
        truth = (r.get("truth") or {}).get("defective")
        if truth is True:
            counts["defective"] += 1
            counts["defective_fail"] += r["decision"] == "FAIL"
        elif truth is False:
            counts["clean"] += 1
            counts["clean_pass"] += r["decision"] == "PASS"
    return counts


def test_defective_frames_fail_and_clean_frames_pass(trained_package: Path, tmp_path: Path) -> None:
    cameras = [
        synthetic_camera("cam1", size=MODEL_SIZE, fps=10, seed=11),
        synthetic_camera("cam2", size=MODEL_SIZE, fps=10, seed=12),
    ]
    cfg = line_config(tmp_path, trained_package, cameras, workers={"count": 2})
    daemon, sub = start_line(tmp_path, cfg, duration=10)
    code = finish(daemon, sub, timeout=90)
    out = daemon.output()
    assert code == 0, out
    assert "PASS=" in out and "e2e p50=" in out, "the status line is missing"
    # each worker says which rule it decides with: the package's, as no decision key is set
    m = ModelPackage.open(trained_package).manifest
    drawn = m.threshold if m.mask_threshold is None else m.mask_threshold
    rule = (
        f"decides at threshold {m.threshold:g} with regions of at least {m.min_defect_area} px; "
        f"draws the mask at {drawn:g}"
    )
    assert out.count(rule) >= 2, out  # one line per worker

    counts = score(sub.results)
    print(
        f"defective frames: {counts['defective_fail']}/{counts['defective']} FAIL; "
        f"clean frames: {counts['clean_pass']}/{counts['clean']} PASS"
    )
    assert counts["defective"] >= 20 and counts["clean"] >= 20, counts
    # The session model is small and briefly trained; these rates are what it gives
    # (see the printed counts), far above the 50% a coin would get on this 50/50 stream.
    assert counts["defective_fail"] / counts["defective"] >= 0.85, counts
    assert counts["clean_pass"] / counts["clean"] >= 0.85, counts

    summary = daemon.summary()
    check_ledger(summary)
    assert summary["totals"]["decided"] == len(sub.results)  # lossless: every frame decided and published
    assert set(summary["backends"]) == {"onnxruntime"}

    # Every published decision is in the SQLite log, with its latencies.
    with sqlite3.connect(cfg["sinks"]["decision_log"]) as db:
        rows = db.execute("SELECT camera_id, seq, decision, latencies FROM decisions").fetchall()
    published = {(r["cam"], r["seq"], r["decision"]) for r in sub.results}
    assert {(c, s, d) for c, s, d, _ in rows} == published
    assert all('"infer"' in lat and '"end_to_end"' in lat for *_, lat in rows)
    # FAILs keep their image and mask.
    assert summary["ng_saved"] == sum(r["decision"] == "FAIL" for r in sub.results)
