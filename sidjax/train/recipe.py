"""A run's recipe: the optimizer and the local loss it trains with, and what of them the config cannot record."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss, check_alpha_schedule
from sidjax.methods import Method
from sidjax.train.config import CUSTOM, TrainConfig


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
        recipe.update(describe_tx(tx))
    loss = config.loss()
    if alpha is not None:
        loss = dataclasses.replace(loss, alpha=tuple(alpha) if isinstance(alpha, list) else alpha)
        check_alpha_schedule(loss, total_steps)
        if loss.scheduled:
            recipe["alpha"] = "schedule"
    return tx, loss, recipe


def as_trained(config: TrainConfig, method: Method, loss: SIDLoss, own_tx: bool) -> TrainConfig:
    """The config as the run trains it, so that its record is true: your own optimizer is ``custom`` (lr,
    momentum, weight decay and schedule None: ``run.json``'s recipe describes it); alpha is what the units
    read (DGL's fixed 1, the values given to ``run``), None where the method reads none or a schedule
    gives it; the head is None on a shared trunk, which has none."""
    changes: dict[str, Any] = {"lr": config.learning_rate}  # the method's default where none was given
    if own_tx:
        changes.update(optimizer=CUSTOM, lr=None, momentum=None, weight_decay=None, schedule=None)
    loss = method.loss(loss)
    if not method.uses_alpha or loss.scheduled:
        changes["alpha"] = None
    else:
        values = [round(float(a), 6) for a in jnp.atleast_1d(jnp.asarray(loss.alpha))]
        changes["alpha"] = tuple(values) if isinstance(loss.alpha, tuple | list) else values[0]
    if config.mode == "trunk":
        changes["head"] = None
    return dataclasses.replace(config, **changes)


def describe_tx(tx: optax.GradientTransformation) -> dict[str, Any]:
    """What is known of your own optimizer: the structure of its state (``tx_state``: the state types in
    order) and the values of any ``optax.inject_hyperparams`` it holds (``tx_hyperparams``)."""
    state = tx.init({"w": jnp.zeros((1,))})
    structure, values = [], {}

    def visit(node):
        if isinstance(node, tuple) and hasattr(node, "_fields"):  # an optax state (a NamedTuple)
            structure.append(type(node).__name__)
            for name, value in zip(node._fields, node, strict=True):
                if name == "hyperparams" and isinstance(value, dict):
                    values.update({k: _number(v) for k, v in value.items()})
                else:
                    visit(value)
        elif isinstance(node, tuple | list):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            for item in node.values():
                visit(item)

    visit(state)
    return {"tx_state": ", ".join(structure), **({"tx_hyperparams": values} if values else {})}


def _number(value: Any) -> Any:
    try:
        return round(float(value), 10)
    except (TypeError, ValueError):
        return repr(value)


def describe_recipe(recipe: dict[str, Any]) -> str:
    """``{"tx": "custom", "alpha": "schedule"}`` -> 'your own optimizer (tx) and your own alpha (schedule)'."""
    parts = [f"your own optimizer (tx: {recipe.get('tx_state', 'custom')})"] if "tx" in recipe else []
    parts += [f"your own alpha ({recipe['alpha']})"] if "alpha" in recipe else []
    parts += [f"a grid over {recipe['grid']}"] if "grid" in recipe else []
    return " and ".join(parts) or "the config's optimizer and alpha"
