"""`lineside demo --workdir DIR` runs its line on DIR's model package and writes DIR's sinks.
(Before: it trained into DIR but ran the line on ./.lineside-demo/package.)"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.edge.daemon import ROOT

pytestmark = pytest.mark.slow


def test_demo_runs_the_line_on_its_own_workdir(line_package: Path, tmp_path: Path) -> None:
    # 10 s, not 4: on a loaded 2-core box the first decisions of a fresh line came after 4 s
    work = tmp_path / "my-demo"
    # The steps before the line are cached when their outputs exist: seed them.
    (work / "data" / "Class1" / "Test").mkdir(parents=True)
    (work / "checkpoint").mkdir()
    (work / "checkpoint" / "training.json").write_text("{}")
    shutil.copytree(line_package, work / "package")
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "demo", "--workdir", str(work), "--duration", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert f"model {(work / 'package').resolve()}" in out, out
    summary = json.loads((work / "runs" / "summary.json").read_text())
    assert summary["totals"]["decided"] > 0
    with sqlite3.connect(work / "runs" / "decisions.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == summary["totals"]["decided"]
