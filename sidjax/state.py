"""Training state: params, one optimizer state per part, the step and the schedule's carry."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.network import NetParams, Network


class TrainState(NamedTuple):
    """Everything that changes during training; a pytree of arrays.

    Attributes:
      params: the network's params.
      opt_state: the stem's and each unit's own optimizer state (stacked
        units have stacked states), so every unit is an independent learner.
      step: int32 scalar, steps taken.
      slots: the pipelined schedule's carry: unit k's pending input
        (``sidjax.units.UnitInput``) for k = 1..K-1, stacked or a tuple like
        the units; ``()`` in every other schedule.
    """

    params: NetParams
    opt_state: NetParams
    step: chex.Array
    slots: Any = ()


def map_units(units: Any, fn, *rest: Any) -> Any:
    """Applies ``fn`` per unit: vmapped over stacked units, mapped over a tuple."""
    if isinstance(units, tuple):
        return tuple(fn(u, *(r[k] for r in rest)) for k, u in enumerate(units))
    return jax.vmap(fn)(units, *rest)


def init_train_state(params: NetParams, tx: optax.GradientTransformation, slots: Any = ()) -> TrainState:
    """One optimizer state for the stem and one per unit."""
    opt_state = NetParams(tx.init(params.stem), map_units(params.units, tx.init))
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32), slots)


def update_part(
    tx: optax.GradientTransformation, params: Any, grads: Any, opt_state: Any, valid: Any = True
) -> tuple[Any, Any]:
    """One optimizer step of one part on its own state; ``valid`` False keeps both unchanged."""
    updates, new_opt = tx.update(grads, opt_state, params)
    new = (optax.apply_updates(params, updates), new_opt)
    if valid is True:
        return new
    return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, (params, opt_state))


def apply_gradients(
    state: TrainState, grads: NetParams, tx: optax.GradientTransformation, valid: chex.Array | None = None
) -> TrainState:
    """The stem and every unit step on their own optimizer state.

    Args:
      state: the current state.
      grads: gradients shaped like ``state.params``.
      tx: the optimizer of every part.
      valid: optional bool ``[K]``; unit k keeps its params and optimizer
        state where False (a pipelined slot not yet filled).
    """
    params, opt = state.params, state.opt_state
    stem, stem_opt = update_part(tx, params.stem, grads.stem, opt.stem)
    if valid is None:
        new = map_units(params.units, lambda p, g, o: update_part(tx, p, g, o), grads.units, opt.units)
    else:
        new = map_units(
            params.units, lambda p, g, o, v: update_part(tx, p, g, o, v), grads.units, opt.units, valid
        )
    if isinstance(params.units, tuple):
        units, unit_opts = tuple(u for u, _ in new), tuple(o for _, o in new)
    else:
        units, unit_opts = new
    return state._replace(
        params=NetParams(stem, units), opt_state=NetParams(stem_opt, unit_opts), step=state.step + 1
    )


def state_units(network: Network, state: TrainState) -> tuple[list[Any], list[Any]]:
    """``(params, opt_states)`` of every unit, as lists."""
    return network.unit_list(state.params.units), network.unit_list(state.opt_state.units)
