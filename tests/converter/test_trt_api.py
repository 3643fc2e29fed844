"""TensorRT/pycuda names used by the project exist in TensorRT 10 and 11 (no GPU needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT.parent / "shared" / "tools" / "trt_api" / "check.py"


@pytest.mark.skipif(
    not CHECK.is_file(), reason=f"{CHECK} is absent (the shared trt_api tool ships beside the repo)"
)
def test_no_missing_tensorrt_or_pycuda_names():
    result = subprocess.run(
        [sys.executable, str(CHECK), "edge/", "converter/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = result.stdout + result.stderr
    missing = [
        line
        for line in report.splitlines()
        if ": missing:" in line or " missing " in line.split(":", 2)[-1][:9]
    ]
    assert result.returncode == 0 and not missing, report
