"""The gates on the TinyUNet of the project's own training code (tests/conftest.py ``trained_package``)."""

from __future__ import annotations

import shutil

import pytest

from converter.package import ModelPackage
from converter.variants import add_variants

pytestmark = pytest.mark.slow


def test_fp16_and_int8_gates_on_the_project_tinyunet(trained_package, synthetic_dataset, tmp_path):
    root = tmp_path / "pkg"
    shutil.copytree(trained_package, root)
    package = add_variants(
        ModelPackage.open(root),
        data_dir=synthetic_dataset,
        precisions=("fp16", "int8"),
        gate_samples=24,
        calibration_samples=24,
    )
    fp16, int8 = package.manifest.gates["fp16"], package.manifest.gates["int8"]
    assert fp16["passed"] and fp16["dice"] >= 0.99 and fp16["agreement"] >= 0.995, fp16
    assert int8["passed"] and int8["dice"] >= 0.95 and int8["agreement"] >= 0.98, int8
    assert fp16["reference_defect_pixels"] > 0, "the trained model finds no defect: the gate proved nothing"
    assert fp16["nonfinite"] == int8["nonfinite"] == 0
    assert package.has_precision("fp16") and package.has_precision("int8")
