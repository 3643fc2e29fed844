"""``lineside synth / train / eval`` through the real command, and the no-TensorFlow import rule."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from converter.quiet import quiet_tensorflow
from edge.cli import build_parser, main
from tests.conftest import needs_tensorflow
from tests.training.conftest import tiny_recipe
from tests.training.test_datasets import write_dagm_split

ROOT = Path(__file__).resolve().parents[2]

#: TensorFlow's C++ log, in the absl format of TF >= 2.17 (``I0000 00:00:17.. 123 file.cc:227] ...``)
#: and the older one (``2024-05-01 12:00:00.123456: I tensorflow/...``), and its known start-up lines
TF_CHATTER = re.compile(
    r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\]"
    r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] tensorflow/"
    r"|oneDNN custom operations|absl::InitializeLog|This TensorFlow binary is optimized",
    re.MULTILINE,
)


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


@needs_tensorflow
def test_bad_recipe_is_one_line_and_exit_code_2(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: {root: x}\nloss: lovasz\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "loss is 'lovasz'; allowed: bce, dice, adaptive, bce_dice" in err
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


def _broken_dagm(root: Path) -> Path:
    """Class1 whose Train/Label/Labels.txt line 4 calls 0003.PNG clean while 0003_label.PNG exists."""
    write_dagm_split(root / "Class1" / "Train", defective=(1, 2), n=6)
    write_dagm_split(root / "Class1" / "Test", defective=(1,), n=4)
    label_dir = root / "Class1" / "Train" / "Label"
    (label_dir / "0003_label.PNG").write_bytes((label_dir / "0001_label.PNG").read_bytes())
    return root


def test_lenient_flag_sets_dataset_lenient():
    from training.cli import _overrides

    parser = build_parser()
    assert _overrides(parser.parse_args(["train", "r.yaml", "--lenient"]))["dataset.lenient"] is True
    assert "dataset.lenient" not in _overrides(parser.parse_args(["train", "r.yaml"]))
    assert parser.parse_args(["eval", "run", "--lenient"]).lenient is True


@needs_tensorflow
def test_labels_txt_disagreement_stops_train_in_one_line(tmp_path, capsys):
    recipe = tiny_recipe(_broken_dagm(tmp_path / "data"), tmp_path / "run")
    recipe["dataset"]["classes"] = [1]
    assert main(["train", str(_write_yaml(tmp_path / "r.yaml", recipe))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Labels.txt:4 says 0003.PNG is clean, but its label file" in err
    assert "pass --lenient" in err


def _write_yaml(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_quiet_filters_only_the_known_warnings(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    emitted = [
        # the two known ones, as Keras raises them
        (
            UserWarning,
            "`shuffle=True` was passed, but will be ignored since ...",
            "keras.src.trainers.epoch_iterator",
        ),
        (FutureWarning, "In the future `np.object` will be defined as ...", "keras.src.export.tf2onnx_lib"),
        # another warning from the same Keras module, and the same text from elsewhere: both real
        (UserWarning, "Skipping variable loading for optimizer 'adam'", "keras.src.trainers.epoch_iterator"),
        (UserWarning, "`shuffle=True` was passed, but will be ignored", "training.pipeline"),
    ]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_tensorflow()
        for category, text, module in emitted:
            warnings.warn_explicit(text, category, "module.py", 1, module=module)
    assert [str(w.message) for w in seen] == [emitted[2][1], emitted[3][1]]
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the user asked for TensorFlow's log
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_tensorflow(verbose=True)
        warnings.warn_explicit(emitted[0][1], UserWarning, "module.py", 1, module=emitted[0][2])
        quiet_tensorflow()
    assert len(seen) == 1 and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


@pytest.mark.slow
def test_train_output_holds_lineside_lines_and_real_problems_only(tmp_path):
    """The real command in a fresh process: no TensorFlow C++ log, no known Keras warning, while
    lineside's own lines and a real problem (a Labels.txt warning under --lenient) still show."""
    recipe = tiny_recipe(_broken_dagm(tmp_path / "data"), tmp_path / "run", epochs=1, steps_per_epoch=2)
    recipe["dataset"]["classes"] = [1]
    # the test session quiets TensorFlow through this variable; the command must do it alone
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "train",
            str(_write_yaml(tmp_path / "r.yaml", recipe)),
            "--lenient",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not TF_CHATTER.findall(output), output
    assert "`shuffle=True` was passed" not in output and "np.object" not in output, output
    assert "WARNING training.datasets.dagm: " in output and "Labels.txt:4 says 0003.PNG is clean" in output
    assert "INFO training.train: " in done.stderr
    assert done.stdout.startswith("model: ")
