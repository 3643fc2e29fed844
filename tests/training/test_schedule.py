"""The time budget shapes the schedule: the epochs that fit, a cosine that ends there, the reports."""

from __future__ import annotations

import re

import pytest

from tests.conftest import needs_tensorflow
from training.optimizers import cosine_lr
from training.schedule import TIME_BUDGET, describe_end, epochs_that_fit


def test_a_busy_machine_gets_a_cosine_that_ends_within_the_budget():
    """Run A of issue 13: 45 epochs of 100 steps planned, 20 minutes, a machine twice as slow."""
    budget, first, second = 20 * 60, 70.0, 60.0  # the first epoch includes graph tracing
    fit = epochs_that_fit(budget, first + second, second, done=2, planned=45)
    assert fit == 2 + int((budget - first - second) // (second * 1.1)) == 18
    assert first + second + (fit - 2) * second * 1.1 <= budget  # ends in time at 10% slower epochs too
    initial, steps = 0.002, 100
    # the last step of the last epoch: the shaped schedule is at its end, the planned one far from it
    assert cosine_lr(initial, fit * steps - 1, fit * steps) < 1e-5 * initial
    assert cosine_lr(initial, fit * steps - 1, 45 * steps) > 0.6 * initial


def test_epochs_that_fit_stays_between_the_epochs_done_and_the_planned_ones():
    assert epochs_that_fit(1200, 60, 20, done=2, planned=45) == 45  # all fit: the recipe's schedule
    assert epochs_that_fit(1200, 1190, 20, done=30, planned=45) == 30  # none more
    assert epochs_that_fit(1200, 1300, 20, done=30, planned=45) == 30  # already over
    assert epochs_that_fit(100, 10, 10, done=1, planned=45, margin=0.0) == 10


def test_the_end_of_a_run_is_never_a_bare_count():
    assert describe_end(17, 45, TIME_BUDGET) == "epoch 17 of 45 (time budget)"
    assert describe_end(45, 45, None) == "epoch 45 of 45"


def _run_budget(budget, epochs: list[int]) -> None:
    for epoch in epochs:
        budget.on_epoch_end(epoch)


@needs_tensorflow
def test_the_budget_ends_the_schedule_where_it_stops(caplog):
    from types import SimpleNamespace

    from training.schedule import make_time_budget_callback

    plans: list[int] = []
    budget = make_time_budget_callback(1e-9, plans.append)  # every epoch overruns it
    budget.set_params({"epochs": 5})
    model = SimpleNamespace(stop_training=False)
    budget.set_model(model)
    budget.on_train_begin()
    with caplog.at_level("INFO", logger="training.schedule"):
        _run_budget(budget, [0])
    assert plans == [1] and budget.plan == 1 and budget.stopped and model.stop_training
    assert "stopping after epoch 1 of 5 (time budget)" in caplog.text
    assert "short of the schedule's end at epoch 5" in caplog.text  # the plan came too late


@needs_tensorflow
def test_the_budget_says_nothing_on_the_last_planned_epoch(caplog):
    from types import SimpleNamespace

    from training.schedule import make_time_budget_callback

    budget = make_time_budget_callback(1e-9)
    budget.set_params({"epochs": 2})
    model = SimpleNamespace(stop_training=False)
    budget.set_model(model)
    budget.on_train_begin()
    with caplog.at_level("INFO", logger="training.schedule"):
        _run_budget(budget, [1])  # resumed at the last epoch: the run ends here anyway
    assert not model.stop_training and not budget.stopped and "stopping" not in caplog.text


def test_the_estimate_follows_a_machine_that_got_busy_but_not_a_periodic_cost():
    from training.schedule import epoch_estimate

    assert epoch_estimate([60.0] * 15 + [90.0, 90.0]) == 90.0  # the mean of all (63.5) lags
    assert epoch_estimate([60.0, 70.0] * 8) == 65.0  # a mining pass every 2 epochs: the mean
    assert epoch_estimate([10.0]) == 10.0


def _budget_on_a_fake_clock(monkeypatch, budget_s: float, epochs: int):
    """(clock, plans, callback): a time budget of ``budget_s`` for ``epochs`` planned, begun at 0 on
    a clock the test sets (``clock[0]``); ``plans`` collects every plan it makes."""
    from types import SimpleNamespace

    import training.schedule as schedule

    now = [0.0]
    monkeypatch.setattr(schedule, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    plans: list[int] = []
    budget = schedule.make_time_budget_callback(budget_s / 60, plans.append, started=0.0)
    budget.set_params({"epochs": epochs})
    budget.set_model(SimpleNamespace(stop_training=False))
    budget.on_train_begin()
    return now, plans, budget


@needs_tensorflow
def test_an_epoch_that_got_slower_shortens_the_plan_at_once(monkeypatch, caplog):
    """The estimate follows the last epochs when they were slower than the mean: a machine that
    gets busy changes the plan before the next epoch runs on the old cosine. The plan grows
    back only in its first half; after that the learning rate only falls."""
    now, plans, budget = _budget_on_a_fake_clock(monkeypatch, budget_s=200, epochs=50)
    now[0] = 1.0
    budget.on_train_batch_end(0)  # tracing ends with the first of 10 steps
    now[0] = 10.0
    budget.on_train_batch_end(9)
    budget.on_epoch_end(0)  # 10 s an epoch: 1 + 190 // 11 = 18 fit
    for epoch, end in ((1, 20.0), (2, 30.0), (3, 55.0)):
        now[0] = end
        budget.on_epoch_end(epoch)
    # epoch 4 took 25 s: the last two (17.5 s) say 4 + 145 // 19.25 = 11; the mean (13.75 s) 13
    assert plans == [18, 4 + int(145 // 19.25)] == [18, 11] and budget.plan == 11
    now[0] = 60.0
    budget.on_epoch_end(4)  # 5 s: 5 + 140 // 16.5 = 13 fit, and 5 of 11 is the plan's first half
    assert plans == [18, 11, 13] and budget.plan == 13


@needs_tensorflow
def test_a_busy_first_epoch_does_not_cut_the_plan_for_good(monkeypatch):
    """The machine was busy while the first epoch ran (30 s, then 10 s each): the plan it made
    grows back to what the later epochs say fits while the run is in its first half."""
    now, plans, budget = _budget_on_a_fake_clock(monkeypatch, budget_s=300, epochs=45)
    now[0] = 30.0
    budget.on_epoch_end(0)  # one step, so timed whole: 1 + 270 // 33 = 9
    assert plans == [9]
    for epoch in range(1, 13):
        now[0] += 10.0
        budget.on_epoch_end(epoch)
    # the mean of all falls towards 10 s and the plan follows it up while the run is in the
    # plan's first half: after 2 epochs, 2 + 260 // (1.1 * 20) = 13; after 4, 4 + 240 // 16.5 =
    # 18; after 11, 11 + 170 // (1.1 * 130 / 11) = 24, and 11 <= 12
    assert plans[:3] == [9, 13, 16] and plans[3] == 4 + int(240 // 16.5) == 18
    assert plans[-1] == 11 + int(170 // (1.1 * 130 / 11)) == 24 and plans == sorted(plans)
    now[0] += 2.0
    budget.on_epoch_end(13)  # past its half a fast epoch no longer raises it (nor the rate)
    assert budget.plan == 24 and plans[-1] == 24


@pytest.mark.slow
def test_a_cut_run_ends_on_small_steps_and_says_where_it_stopped(dagm_root, tmp_path, capsys, caplog):
    """120 epochs of 60 steps do not fit in the budget: it must cut the run, end the cosine at
    the cut and report it in the summary, the log and training.json. The budget is measured
    against a control in the same process: the same recipe stopped after its first epoch
    (set-up and graph tracing included), plus 30 s for the later epochs (1-2.5 s each here).
    A fixed 90 s left a loaded machine nothing to shape. The planned epochs cost nothing (the
    budget ends the run), and 120 of them do not fit in 30 s unless an epoch takes under
    0.25 s: with 40, a machine whose epochs took under 0.75 s would have fit them all."""
    import json

    import yaml

    from edge.cli import main
    from tests.training.conftest import tiny_recipe
    from training.train import train

    planned, steps = 120, 60
    control = tiny_recipe(
        dagm_root, tmp_path / "control", epochs=planned, steps_per_epoch=steps, max_minutes=1e-3
    )
    control["optimizer"]["schedule"] = "cosine"
    first_epoch = json.loads((train(control) / "training.json").read_text())["train_seconds"]
    budget_s = 1.2 * first_epoch + 30  # room for 10-20 more epochs
    recipe = tiny_recipe(
        dagm_root, tmp_path / "cut", epochs=planned, steps_per_epoch=steps, max_minutes=budget_s / 60
    )
    recipe["optimizer"]["schedule"] = "cosine"
    path = tmp_path / "cut.yaml"
    path.write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["train", str(path)]) == 0
    info = json.loads((tmp_path / "cut" / "training.json").read_text())
    done = info["epochs_done"]
    slower = re.search(r"short of the schedule's end at epoch (\d+), as the epochs got slower", caplog.text)
    if done == 1 and slower and int(slower[1]) == planned:
        # the first epoch took the whole budget after all: nothing was left to shape
        pytest.skip(f"the first epoch took {info['train_seconds']:.0f} s, its control {first_epoch:.0f} s")
    assert info["stopped_by"] == "time budget" and info["epochs_planned"] == planned and 2 <= done < planned
    assert info["schedule_epochs"] == done  # it stopped where the shaped schedule ends
    assert info["ended"] == f"epoch {done} of {planned} (time budget)"
    # the budget decides at each epoch's end; the last checkpoint and the end of fit come after
    # (0.3-3 s here), so train_seconds may pass the budget by that much, never by an epoch
    assert info["train_seconds"] <= budget_s + 5
    assert f"{info['ended']}  train time" in capsys.readouterr().out
    assert f"trained tinyunet: epoch {done} of {planned} (time budget)" in caplog.text
    rates = [h["learning_rate"] for h in json.loads((tmp_path / "cut" / "history.json").read_text())]
    assert len(rates) == done
    # the rate falls, but for the plan growing back in its first half, where a longer cosine
    # lifts it a few percent (a loaded CI run: 0.00161 -> 0.00168 at epoch 11); that it grows
    # only in the first half (GROW_UNTIL) is tested on a fake clock above
    for i in range(1, done):
        assert rates[i] <= 1.1 * rates[i - 1], (i, rates)
    if slower is None:
        # the planned schedule would still be above 60% of its rate here; the shaped one is at its end
        assert rates[-1] < 0.05 * 0.003
    else:
        # A machine that slowed down under the last epoch ends the run one epoch short of the
        # shaped plan that epoch ran on, and says so: its last rate is that plan's cosine.
        shaped = int(slower[1])
        assert shaped < planned and rates[-1] == pytest.approx(
            cosine_lr(0.003, done * steps - 1, shaped * steps)
        )


@pytest.mark.slow
def test_a_resumed_cosine_run_keeps_its_place_in_the_schedule(dagm_root, tmp_path):
    import json

    from tests.training.conftest import tiny_recipe
    from training.train import train

    out = tmp_path / "resumed"
    for epochs in (1, 2):
        recipe = tiny_recipe(dagm_root, out, epochs=epochs)
        recipe["optimizer"]["schedule"] = "cosine"
        train(recipe)
    history = json.loads((out / "history.json").read_text())
    # 3 steps per epoch; each epoch logs the rate of its last step (steps 2 and 5 of 6 in the end)
    assert history[0]["learning_rate"] == pytest.approx(cosine_lr(0.003, 2, 3))
    assert history[1]["learning_rate"] == pytest.approx(cosine_lr(0.003, 5, 6))
    info = json.loads((out / "training.json").read_text())
    assert info["ended"] == "epoch 2 of 2" and info["stopped_by"] is None
