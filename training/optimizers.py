"""Optimizer recipes: RMSProp with staircase exponential decay (UNet_Industrial) and Adam (Keras seeds)."""

from __future__ import annotations

from typing import Any


def learning_rate(opt_cfg: dict[str, Any]):
    """A constant or a staircase ExponentialDecay schedule (``decay_steps: 0`` means constant)."""
    import keras

    if opt_cfg["decay_steps"] and opt_cfg["decay_rate"] != 1.0:
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
