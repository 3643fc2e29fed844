"""Optimizer recipes: RMSProp with staircase exponential decay (UNet_Industrial) and Adam (Keras seeds)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def cosine_lr(initial: float, step: int, total_steps: int) -> float:
    """Cosine decay from ``initial`` at step 0 to 0 at ``total_steps`` (Keras' CosineDecay, alpha 0)."""
    done = min(step, total_steps) / max(total_steps, 1)
    return initial * 0.5 * (1.0 + math.cos(math.pi * done))


def step_schedule(opt_cfg: dict[str, Any]) -> Callable[[int, int], float] | None:
    """The learning rate as a function of (step, the run's total steps) for schedules that need
    the run's length (cosine), else None (the rate is fixed in the optimizer).

    Cosine ends the run at a learning rate near 0, so the last weights are not one noisy step
    of a large learning rate. ``training.schedule.make_lr_schedule_callback`` sets the rate
    before every step, so the time budget can shorten the schedule when the run is cut.
    """
    if opt_cfg.get("schedule") == "cosine":
        initial = opt_cfg["learning_rate"]
        return lambda step, total_steps: cosine_lr(initial, step, total_steps)
    return None


def learning_rate(opt_cfg: dict[str, Any]):
    """The optimizer's learning rate: a staircase ExponentialDecay, or a constant
    (``decay_steps: 0``, and cosine, whose rate ``step_schedule`` sets per step)."""
    import keras

    if step_schedule(opt_cfg) is None and opt_cfg["decay_steps"] and opt_cfg["decay_rate"] != 1.0:
        return keras.optimizers.schedules.ExponentialDecay(
            opt_cfg["learning_rate"], opt_cfg["decay_steps"], opt_cfg["decay_rate"], staircase=True
        )
    return opt_cfg["learning_rate"]


def build_optimizer(opt_cfg: dict[str, Any]):
    """RMSProp (centered, rho 0.9, momentum 0.8 in UNet_Industrial) or Adam, from a recipe's ``optimizer``."""
    import keras

    lr = learning_rate(opt_cfg)
    if opt_cfg["name"] == "rmsprop":
        return keras.optimizers.RMSprop(
            learning_rate=lr, rho=opt_cfg["rho"], momentum=opt_cfg["momentum"], centered=opt_cfg["centered"]
        )
    return keras.optimizers.Adam(learning_rate=lr)
