"""Learning-rate schedules of the optimizer recipes."""

from __future__ import annotations

import pytest

from training.config import ConfigError, load_config


def _opt(**over):
    recipe = {"dataset": {"kind": "synthetic"}, "optimizer": {"name": "adam", "learning_rate": 0.002, **over}}
    return load_config(recipe)["optimizer"]


def test_cosine_decays_to_zero_over_the_run():
    from training.optimizers import learning_rate

    schedule = learning_rate(_opt(schedule="cosine"), total_steps=1000)
    assert float(schedule(0)) == pytest.approx(0.002)
    assert float(schedule(500)) == pytest.approx(0.001, rel=1e-4)
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-9)


def test_exponential_is_staircase_and_zero_steps_is_constant():
    from training.optimizers import learning_rate

    schedule = learning_rate(_opt(decay_steps=100, decay_rate=0.5))
    assert float(schedule(99)) == pytest.approx(0.002) and float(schedule(100)) == pytest.approx(0.001)
    assert learning_rate(_opt(decay_steps=0)) == pytest.approx(0.002)


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ConfigError, match=r"optimizer.schedule.*exponential, cosine"):
        _opt(schedule="linear")
