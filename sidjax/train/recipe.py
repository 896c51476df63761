"""A run's recipe: the optimizer and the local loss it trains with, and what of them the config cannot record."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from sidjax.errors import ConfigError
from sidjax.losses import check_alpha_schedule
from sidjax.train.config import TrainConfig


def make_recipe(
    config: TrainConfig, total_steps: int, tx, alpha, injected: tuple[str, ...]
) -> tuple[optax.GradientTransformation, Any, dict]:
    """The optimizer, the local loss and the record of what the config does not hold."""
    recipe = {}
    if injected:
        recipe["grid"] = ",".join(injected)
    if tx is None:
        tx = config.for_point(config.points()[0]).optimizer_tx(total_steps, injected)
    elif config.grid:
        raise ConfigError(
            f"a grid over {', '.join(config.grid)} sets the config's optimizer's values; your own tx holds its "
            "own: give one value, or a grid without tx",
            next(iter(config.grid)),
        )
    else:
        if not isinstance(tx, optax.GradientTransformation):
            tx = tx(total_steps) if callable(tx) else tx
        if not isinstance(tx, optax.GradientTransformation):
            raise ConfigError(
                f"tx must be an optax transformation or total_steps -> transformation, got {type(tx).__name__}",
                "tx",
            )
        recipe["tx"] = "custom"
    loss = config.loss()
    if alpha is not None:
        loss = dataclasses.replace(loss, alpha=tuple(alpha) if isinstance(alpha, list) else alpha)
        check_alpha_schedule(loss, total_steps)
        recipe["alpha"] = (
            "schedule"
            if loss.scheduled
            else f"given {[round(float(a), 6) for a in jnp.atleast_1d(jnp.asarray(loss.alpha))]}"
        )
    return tx, loss, recipe
