"""``lineside synth / train / eval`` through the real command, and the no-TensorFlow import rule."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge.cli import main


def test_training_cli_does_not_import_tensorflow():
    code = (
        "import sys, training, training.cli; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_subcommands_are_registered(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "recipe YAML" in capsys.readouterr().out


def test_synth_writes_the_dagm_layout(tmp_path, capsys):
    assert (
        main(["synth", str(tmp_path), "--classes", "3", "--n-train", "2", "--n-test", "2", "--size", "64"])
        == 0
    )
    assert (tmp_path / "Class3" / "Test" / "Label" / "Labels.txt").is_file()
    assert json.loads(capsys.readouterr().out)["classes"]["3"]["Train"]["images"] == 2


def test_bad_recipe_is_one_line_and_exit_code_2(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: {root: x}\nloss: focal\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'loss' is 'focal'; allowed: bce, dice, adaptive, bce_dice" in err
    assert main(["train", str(recipe), "--set", "loss=bce", "--set", "dataset.kind=dagm"]) == 2
    assert "DAGM root x does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_writes_table_json_and_pngs(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(["eval", str(trained_run), "-o", str(out), "--examples", "4", "--set", "eval.threshold=0.25"])
        == 0
    )
    table = capsys.readouterr().out
    assert "Dice@0.25" in table and "\n      1 " in table and "\n      2 " in table and "\n    all " in table
    summary = json.loads((out / "eval.json").read_text())
    assert summary["threshold"] == 0.25 and summary["overall"]["images"] == 8
    for name in ("eval_grid.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
