"""The run's length: the learning rate per step, and the time budget that may shorten the run.

``train.max_minutes`` used to stop a run wherever the budget ran out, in the middle of a
cosine schedule planned for ``train.epochs``: the last weights then came from large
learning-rate steps (a run that stopped at epoch 17 of 45 was still at 65% of its
learning rate). Here the budget callback times the first epochs, works out how many epochs
fit, and shortens the cosine schedule to end there, so a cut run still ends on small steps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: the estimate counts every epoch this much longer than measured, so that a machine slowing
#: down a little towards the end still finishes the last planned epoch within the budget
BUDGET_MARGIN = 0.1
#: the epochs whose mean time can raise the estimate above the mean of all (epoch_estimate)
RECENT_EPOCHS = 2
#: the share of its plan a run may have done and still have the plan grow back (``_replan``)
GROW_UNTIL = 0.5
#: ``stopped_by`` of a run the time budget ended before ``train.epochs``
TIME_BUDGET = "time budget"


def epochs_that_fit(
    budget_s: float, elapsed_s: float, epoch_s: float, done: int, planned: int, margin: float = BUDGET_MARGIN
) -> int:
    """How many epochs the run can have in all: ``done`` plus those of ``epoch_s`` (plus ``margin``)
    that fit in the budget left, at most ``planned`` and never fewer than ``done``."""
    left = budget_s - elapsed_s
    more = math.floor(left / (epoch_s * (1.0 + margin))) if epoch_s > 0 else planned
    return max(done, min(planned, done + max(more, 0)))


def epoch_estimate(durations: list[float]) -> float:
    """The epoch time to plan with: the mean so far, or the mean of the last ``RECENT_EPOCHS``
    when that is longer. A machine that gets busy after 15 epochs moves the mean of all of
    them little, and the run's last epochs would overrun the plan; the latest epoch alone
    would take every periodic cost (a mining pass every 2 epochs: 70 s against 60 s) as the
    new pace, and the plan, which grows back only in its first half, would lose epochs to it."""
    mean = sum(durations) / len(durations)
    recent = durations[-RECENT_EPOCHS:]
    return max(mean, sum(recent) / len(recent))


def describe_end(epochs_done: int, epochs_planned: int, stopped_by: str | None) -> str:
    """Where a run ended, as every report prints it: ``epoch 17 of 45 (time budget)``."""
    text = f"epoch {epochs_done} of {epochs_planned}"
    return f"{text} ({stopped_by})" if stopped_by else text


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


def make_lr_schedule_callback(schedule: Callable[[int, int], float], total_steps: int):
    """Sets the optimizer's learning rate before every step to ``schedule(step, total_steps)``.

    A Keras ``LearningRateSchedule`` is traced into the training graph with its length fixed;
    a rate set from here follows ``total_steps`` when the time budget changes it mid-run
    (``set_total_steps``), and the optimizer saved in ``model.keras`` stays a built-in one.
    The rate of each epoch's last step goes into the epoch's logs (``history.json``).
    """

    class StepSchedule(_keras_callback_base()):
        def __init__(self):
            super().__init__()
            self.total_steps = total_steps

        def set_total_steps(self, steps: int) -> None:
            self.total_steps = steps

        def on_train_begin(self, logs=None):
            # the optimizer's step count is checkpointed, so a resumed run keeps its place
            self.step = int(self.model.optimizer.iterations.numpy())

        def on_train_batch_begin(self, batch, logs=None):
            self.rate = schedule(self.step, self.total_steps)
            self.model.optimizer.learning_rate = self.rate
            self.step += 1

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None and hasattr(self, "rate"):
                logs["learning_rate"] = float(self.rate)

    return StepSchedule()


def make_time_budget_callback(
    max_minutes: float, on_plan: Callable[[int], None] | None = None, started: float | None = None
):
    """Ends training after the last epoch that fits in ``max_minutes`` of wall time from ``started``
    (a ``time.perf_counter()``; default: when ``fit`` calls the callbacks first, after Keras has
    built the input pipeline: 1.5 s for the tests' 40 epochs, 6 s for the benchmark recipe's 100
    on real-surface images, since one traced map serves every epoch).

    After every epoch it estimates the epochs that fit (``epochs_that_fit``) from the mean epoch
    time (``epoch_estimate``: or the last epochs' when they were slower); the plan grows back
    only in its first half (``GROW_UNTIL``). The first epoch of a process is timed from the end
    of its first step, scaled to all of its steps: before that come the input pipeline's start
    and the graph tracing (together up to 24 s for the tests' tiny model on a busy CPU before the
    train step was traced once, against 1 s for each later epoch), and planning from them
    stopped a run that had room for fifteen more epochs. When the estimate changes,
    ``on_plan(epochs)`` is called, so that the learning-rate schedule can end at the new last
    epoch. Training stops at the planned epoch; should that come sooner than the last estimate
    said (the epochs got slower), with a warning. ``stopped``
    and ``plan`` tell the outcome.
    """

    budget_s = max_minutes * 60

    class TimeBudget(_keras_callback_base()):
        stopped = False

        def on_train_begin(self, logs=None):
            self.started = time.perf_counter() if started is None else started
            self.planned = self.plan = self.params.get("epochs", 0)
            self.durations: list[float] = []
            self.last_end = self.started
            self.traced: float | None = None  # the end of the process's first step
            self.first_steps = 0

        def on_train_batch_end(self, batch, logs=None):
            if not self.durations:
                self.first_steps = batch + 1
                if self.traced is None:
                    self.traced = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            # from one epoch's end to the next, so the other callbacks' time (checkpoints) counts too
            now = time.perf_counter()
            if not self.durations and self.first_steps > 1:
                self.durations.append((now - self.traced) * self.first_steps / (self.first_steps - 1))
            else:
                self.durations.append(now - self.last_end)
            self.last_end = now
            done, elapsed = epoch + 1, now - self.started
            previous = self.plan
            self._replan(done, elapsed, epoch_estimate(self.durations))
            if self.plan > done or done >= self.planned:
                return  # more epochs fit, or the last planned epoch: the run ends anyway
            if previous > done:
                # the epochs got slower than estimated: the learning rate is not at its end
                short = f"short of the schedule's end at epoch {previous}, as the epochs got slower"
                self._stop(logging.WARNING, done, elapsed, short)
            else:
                self._stop(logging.INFO, done, elapsed, "where the schedule ends")

        def _replan(self, done: int, elapsed: float, per_epoch: float) -> None:
            # Late in a run the plan only shrinks: raising it would raise the learning rate again (a
            # 20-minute run whose plan went 19, 20, 19, 18, 19, 20 epochs bumped it 9 % each time).
            # In the first half it may grow back, where the cosine is near its top and a longer
            # one lifts the rate a few percent: a first epoch slowed by other work on the machine
            # (not by the run) would otherwise fix the plan for good.
            fit = epochs_that_fit(budget_s, elapsed, per_epoch, done, self.planned)
            if done > GROW_UNTIL * self.plan:
                fit = min(fit, self.plan)
            if fit == self.plan:
                return
            self.plan = fit
            logger.info(
                "time budget of %.1f min: %d of %d epochs fit (%.1f s each); the schedule ends there",
                max_minutes,
                fit,
                self.planned,
                per_epoch,
            )
            if on_plan is not None:
                on_plan(fit)

        def _stop(self, level: int, done: int, elapsed: float, how: str) -> None:
            logger.log(
                level,
                "time budget of %.1f min: stopping after %s at %.1f min, %s",
                max_minutes,
                describe_end(done, self.planned, TIME_BUDGET),
                elapsed / 60,
                how,
            )
            self.stopped = True
            self.model.stop_training = True

    return TimeBudget()
