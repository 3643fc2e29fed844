"""Optimizer recipes: RMSProp with staircase exponential decay (UNet_Industrial) and Adam (Keras seeds)."""

from __future__ import annotations

from typing import Any


def learning_rate(opt_cfg: dict[str, Any], total_steps: int = 0):
    """The recipe's learning rate: cosine decay to 0 over ``total_steps``, a staircase
    ExponentialDecay, or a constant (``decay_steps: 0``).

    Cosine ends the run at a learning rate near 0, so the last weights are not one noisy
    step of a large learning rate; it needs the run's length, hence ``total_steps``.
    """
    import keras

    if opt_cfg.get("schedule") == "cosine" and total_steps:
        return keras.optimizers.schedules.CosineDecay(opt_cfg["learning_rate"], total_steps)
    if opt_cfg["decay_steps"] and opt_cfg["decay_rate"] != 1.0:
        return keras.optimizers.schedules.ExponentialDecay(
            opt_cfg["learning_rate"], opt_cfg["decay_steps"], opt_cfg["decay_rate"], staircase=True
        )
    return opt_cfg["learning_rate"]


def build_optimizer(opt_cfg: dict[str, Any], total_steps: int = 0):
    """RMSProp (centered, rho 0.9, momentum 0.8 in UNet_Industrial) or Adam, from a recipe's ``optimizer``."""
    import keras

    lr = learning_rate(opt_cfg, total_steps)
    if opt_cfg["name"] == "rmsprop":
        return keras.optimizers.RMSprop(
            learning_rate=lr, rho=opt_cfg["rho"], momentum=opt_cfg["momentum"], centered=opt_cfg["centered"]
        )
    return keras.optimizers.Adam(learning_rate=lr)
