"""``train()``: the checkpoint contract, resume from the saved step, same seed gives the same model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import tiny_recipe

DEMO_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "train" / "demo.yaml"

pytestmark = pytest.mark.slow


def test_checkpoint_contract(trained_run):
    import keras

    info = json.loads((trained_run / "training.json").read_text())
    assert info["architecture"] == "tinyunet"
    assert info["input"] == {"height": 64, "width": 64, "channels": 1}
    assert info["normalization"] == "zero_one" and info["threshold"] == 0.5 and info["min_defect_area"] == 4
    assert info["dataset"]["kind"] == "dagm" and info["dataset"]["classes"] == [1, 2]
    assert info["seed"] == 3 and info["model_file"] == "model.keras" and info["epochs_done"] == 2
    assert info["steps_done"] == 6
    for key in ("dice", "iou", "tpr", "tnr", "per_class", "image_auroc"):
        assert key in info["metrics"]
    assert set(info["metrics"]["image_auroc"]) == {"largest_region", "peak"}
    assert info["metrics"]["images"] == 8 and set(info["metrics"]["per_class"]) == {"1", "2"}
    model = keras.models.load_model(trained_run / info["model_file"], compile=False)
    out = model.predict(np.zeros((1, 64, 64, 1), np.float32), verbose=0)
    assert out.shape == (1, 64, 64, 1)
    history = json.loads((trained_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all("loss" in h for h in history)


def test_model_file_loads_without_the_training_package(trained_run):
    """The converter loads model.keras with plain Keras; no custom object may be needed."""
    import subprocess
    import sys

    code = (
        "import sys, keras; "
        f"m = keras.models.load_model({str(trained_run / 'model.keras')!r}, compile=False); "
        "assert 'training' not in sys.modules; print(m.output_shape)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(None, None, None, 1)" in result.stdout


def _weights(run):
    import keras

    return keras.models.load_model(run / "model.keras", compile=False).get_weights()


def test_resume_continues_from_the_saved_step(dagm_root, tmp_path, trained_run):
    from training.callbacks import load_state
    from training.train import train

    out = tmp_path / "resumed"
    # "interrupted" after epoch 1 of 2
    train(tiny_recipe(dagm_root, out, epochs=1))
    assert load_state(out) == {"epoch": 1, "step": 3}
    train(tiny_recipe(dagm_root, out, epochs=2))
    assert load_state(out) == {"epoch": 2, "step": 6}
    info = json.loads((out / "training.json").read_text())
    assert info["epochs_done"] == 2 and info["steps_done"] == 6
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    # the resumed run ends where the uninterrupted run with the same seed ended
    for resumed, straight in zip(_weights(out), _weights(trained_run), strict=True):
        assert np.allclose(resumed, straight, atol=1e-5)
    # a finished run is not trained again
    train(tiny_recipe(dagm_root, out, epochs=2))
    assert load_state(out) == {"epoch": 2, "step": 6}


def test_same_seed_same_model(dagm_root, tmp_path, trained_run):
    from training.train import train

    again = train(tiny_recipe(dagm_root, tmp_path / "again"))
    for a, b in zip(_weights(again), _weights(trained_run), strict=True):
        assert np.array_equal(a, b)
    # and a different seed gives a different initialization (checked without training)
    import keras

    from training.config import load_config
    from training.models import build_model

    model_cfg = load_config(tiny_recipe(dagm_root, tmp_path / "x"))["model"]
    keras.utils.set_random_seed(4)
    assert not np.array_equal(build_model(model_cfg).get_weights()[0], _weights(trained_run)[0])


def test_same_seed_same_model_across_processes_at_demo_shapes(tmp_path):
    """Two ``lineside train`` processes give identical weights at the demo's crop and batch.

    At these shapes (160 px crops, batches of 8, BatchNorm) ops that run side by side used
    to add gradients in varying order; the in-process test above is too small to show it.
    """
    import subprocess
    import sys

    from converter.synthetic import write_dagm

    write_dagm(tmp_path / "data", classes=(1,), n_train=6, n_test=2, size=512, seed=1)
    sets = {
        "dataset.kind": "dagm",
        "dataset.root": str(tmp_path / "data"),
        "train.epochs": 1,
        "train.steps_per_epoch": 12,
        "train.tensorboard": "false",
        "train.progress": "false",
    }
    procs = []
    # side by side: the two compete for the cores, which shifts each one's thread timing (what
    # put sums in varying order), and the test takes about one run's time, not two
    try:
        for name in ("a", "b"):
            argv = [sys.executable, "-m", "edge.cli", "train", str(DEMO_RECIPE), "-o", str(tmp_path / name)]
            for key, value in sets.items():
                argv += ["--set", f"{key}={value}"]
            # to files: a full pipe would stall one run while the test waits on the other
            with open(tmp_path / f"{name}.err", "w") as err:
                procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err))
        for name, proc in zip("ab", procs, strict=True):
            assert proc.wait(timeout=300) == 0, (tmp_path / f"{name}.err").read_text()[-2000:]
    finally:
        for proc in procs:
            proc.kill()
    for a, b in zip(_weights(tmp_path / "a"), _weights(tmp_path / "b"), strict=True):
        assert np.array_equal(a, b)


def test_time_budget_stops_before_the_epoch_that_would_overrun(dagm_root, tmp_path):
    from training.callbacks import load_state
    from training.train import train

    # 0.002 min is 0.12 s: the first epoch (graph tracing included) already takes longer,
    # so the run ends after it instead of starting the second of five
    out = train(tiny_recipe(dagm_root, tmp_path / "budget", epochs=5, max_minutes=0.002))
    assert load_state(out) == {"epoch": 1, "step": 3}
    info = json.loads((out / "training.json").read_text())
    assert info["epochs_done"] == 1 and info["ended"] == "epoch 1 of 5 (time budget)"


def test_mixed_precision_run_saves_a_float32_model(dagm_root, tmp_path):
    import keras

    from training.train import train

    out = train(tiny_recipe(dagm_root, tmp_path / "mp", epochs=1, mixed_precision=True))
    try:
        model = keras.models.load_model(out / "model.keras", compile=False)
        # the exported graph must not inherit float16 compute from training
        assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_distribution_strategies(monkeypatch):
    import tensorflow as tf

    from training.config import ConfigError
    from training.train import _strategy

    assert isinstance(_strategy("mirrored"), tf.distribute.MirroredStrategy)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        _strategy("multi_worker")


def test_mirrored_strategy_trains(dagm_root, tmp_path):
    """MirroredStrategy runs the same training loop (one replica on a CPU-only machine)."""
    from training.callbacks import load_state
    from training.train import train

    out = train(tiny_recipe(dagm_root, tmp_path / "mirrored", epochs=1, strategy="mirrored"))
    assert load_state(out) == {"epoch": 1, "step": 3}
    assert json.loads((out / "training.json").read_text())["epochs_done"] == 1
