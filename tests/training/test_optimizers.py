"""Learning-rate schedules of the optimizer recipes."""

from __future__ import annotations

import pytest

from tests.conftest import needs_tensorflow
from training.config import ConfigError, load_config


def _opt(**over):
    recipe = {"dataset": {"kind": "synthetic"}, "optimizer": {"name": "adam", "learning_rate": 0.002, **over}}
    return load_config(recipe)["optimizer"]


def test_cosine_decays_to_zero_over_the_run():
    from training.optimizers import step_schedule

    schedule = step_schedule(_opt(schedule="cosine"))
    assert schedule(0, 1000) == pytest.approx(0.002)
    assert schedule(500, 1000) == pytest.approx(0.001, rel=1e-4)
    assert schedule(1000, 1000) == pytest.approx(0.0, abs=1e-9)
    assert schedule(1200, 1000) == pytest.approx(0.0, abs=1e-9)  # a run resumed past its end
    assert schedule(500, 2000) == pytest.approx(0.002 * 0.5 * (1 + 0.7071068), rel=1e-6)


@needs_tensorflow
def test_cosine_matches_keras_and_leaves_the_rate_settable():
    """The rate is set per step (the time budget may shorten the run), so the optimizer holds a
    plain rate; the values are Keras' CosineDecay's."""
    import keras

    from training.optimizers import build_optimizer, step_schedule

    keras_cosine = keras.optimizers.schedules.CosineDecay(0.002, 1000)
    schedule = step_schedule(_opt(schedule="cosine"))
    for step in (0, 1, 250, 999, 1000):
        assert schedule(step, 1000) == pytest.approx(float(keras_cosine(step)), rel=1e-5, abs=1e-10)
    optimizer = build_optimizer(_opt(schedule="cosine"))
    optimizer.learning_rate = 0.0005
    assert float(optimizer.learning_rate) == pytest.approx(0.0005)
    assert step_schedule(_opt(schedule="exponential")) is None


@needs_tensorflow
def test_exponential_is_staircase_and_zero_steps_is_constant():
    from training.optimizers import learning_rate

    schedule = learning_rate(_opt(decay_steps=100, decay_rate=0.5))
    assert float(schedule(99)) == pytest.approx(0.002) and float(schedule(100)) == pytest.approx(0.001)
    assert learning_rate(_opt(decay_steps=0)) == pytest.approx(0.002)


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ConfigError, match=r"optimizer.schedule.*exponential, cosine"):
        _opt(schedule="linear")
