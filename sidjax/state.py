"""Training state: variables, one optimizer state per part, the step and the schedule's carry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.network import Network, Parts, Variables


class TrainState(NamedTuple):
    """Everything that changes during training; a pytree of arrays.

    Attributes:
      params: the network's trained variables (``Parts``).
      stats: its other variables, updated by the training forward pass
        (BatchNorm's running statistics; empty for most networks).
      opt_state: the stem's and each unit's own optimizer state (stacked
        units have stacked states), so every unit is an independent learner.
      step: int32 scalar, steps taken.
      slots: the pipelined schedule's carry (``sidjax.schedule``): unit k's
        pending input for k = 1..K-1, stacked or a tuple like the units;
        ``()`` in the synchronous schedule.
    """

    params: Parts
    stats: Parts
    opt_state: Parts
    step: chex.Array
    slots: Any = ()

    @property
    def variables(self) -> Variables:
        """``Variables(params, stats)``: what evaluation and prediction read."""
        return Variables(self.params, self.stats)


def map_units(units: Any, fn, *rest: Any) -> Any:
    """Applies ``fn`` per unit: vmapped over stacked units, mapped over a tuple."""
    if isinstance(units, tuple):
        return tuple(fn(u, *(r[k] for r in rest)) for k, u in enumerate(units))
    return jax.vmap(fn)(units, *rest)


def init_opt_state(params: Parts, tx: optax.GradientTransformation) -> Parts:
    """One optimizer state for the stem and one per unit."""
    return Parts(tx.init(params.stem), map_units(params.units, tx.init))


def new_state(variables: Variables, tx: optax.GradientTransformation, slots: Any = ()) -> TrainState:
    """A fresh ``TrainState`` at step 0."""
    return TrainState(variables.params, variables.stats, init_opt_state(variables.params, tx),
                      jnp.zeros((), jnp.int32), slots)  # fmt: skip


def keep_where(valid: Any, new: Any, old: Any) -> Any:
    """``new`` where ``valid``, else ``old`` (no select is traced when ``valid`` is the constant True)."""
    if valid is True:
        return new
    return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, old)


def update_part(
    tx: optax.GradientTransformation, params: Any, grads: Any, opt_state: Any, valid: Any = True
) -> tuple[Any, Any]:
    """One optimizer step of one part on its own state; ``valid`` False keeps both unchanged."""
    updates, new_opt = tx.update(grads, opt_state, params)
    return keep_where(valid, (optax.apply_updates(params, updates), new_opt), (params, opt_state))


def apply_gradients(
    state: TrainState,
    grads: Parts,
    stats: Parts,
    tx: optax.GradientTransformation,
    valid: chex.Array | None = None,
) -> TrainState:
    """The stem and every unit step on their own optimizer state; ``stats`` replace the old ones.

    Args:
      state: the current state.
      grads: gradients shaped like ``state.params``.
      stats: the stats after this step's forward pass.
      tx: the optimizer of every part.
      valid: optional bool ``[K]``; unit k keeps its params, stats and
        optimizer state where False (a pipelined slot not yet filled).
    """
    params, opt = state.params, state.opt_state
    stem, stem_opt = update_part(tx, params.stem, grads.stem, opt.stem)
    if valid is None:
        new = map_units(params.units, lambda p, g, o: update_part(tx, p, g, o), grads.units, opt.units)
        unit_stats = stats.units
    else:
        new = map_units(
            params.units, lambda p, g, o, v: update_part(tx, p, g, o, v), grads.units, opt.units, valid
        )
        unit_stats = map_units(stats.units, lambda n, v, o: keep_where(v, n, o), valid, state.stats.units)
    if isinstance(params.units, tuple):
        units, unit_opts = tuple(u for u, _ in new), tuple(o for _, o in new)
    else:
        units, unit_opts = new
    return state._replace(
        params=Parts(stem, units),
        stats=Parts(stats.stem, unit_stats),
        opt_state=Parts(stem_opt, unit_opts),
        step=state.step + 1,
    )


class Learner(NamedTuple):
    """Everything that trains one network with one method, execution, schedule and placement.

    optax's ``GradientTransformation(init, update)`` for a whole network: the
    state comes from the same record that steps it. Built by
    ``sidjax.make_learner``.

    Attributes:
      network: the network it trains.
      init: ``init(variables) -> TrainState``, fresh optimizer states (and
        slots, for the pipelined schedule), placed.
      step: ``step(state, (x [B, ...], labels [B]), key) -> (state,
        metrics)``; ``key`` is the run's train key (the step folds in
        ``state.step``).
      place: a ``TrainState`` in the network's layout (restored from a
        checkpoint, gathered) -> placed as ``init`` places it.
      gather: a placed state -> the network's layout, readable by one
        program (evaluation, checkpoints).
      put: host arrays (data) -> where this learner's programs read them.
      memory_bytes: ``(state, batch, key) -> int``: compiled memory of one
        step beyond its arguments, as training runs it (donated state).
      traceable: ``step`` is one program that may be traced inside another
        (``lax.scan`` over steps, ``vmap`` over seeds); False for stages,
        whose step dispatches one program per stage from Python.
    """

    network: Network
    init: Callable[[Variables], TrainState]
    step: Callable[[TrainState, tuple[chex.Array, chex.Array], chex.PRNGKey], tuple[TrainState, dict]]
    place: Callable[[TrainState], TrainState]
    gather: Callable[[TrainState], TrainState]
    put: Callable[[Any], Any]
    memory_bytes: Callable[[TrainState, tuple[chex.Array, chex.Array], chex.PRNGKey], int]
    traceable: bool = True
