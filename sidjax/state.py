"""Training state: variables, one optimizer state per part, the step and the schedule's carry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.network import Network, Parts, UnitInput, Variables


class PartState(NamedTuple):
    """A trainable part (the stem or one unit) as it learns: its params, its stats and its own optimizer state.

    For stacked units one ``PartState`` holds all K, every leaf ``[K, ...]``.
    """

    params: Any
    stats: Any
    opt_state: Any


class SavedState(NamedTuple):
    """A ``TrainState`` as checkpoints hold it: ``params``, ``stats`` and ``opt_state`` as three ``Parts``.

    The network's own layout (``Variables`` plus the optimizer state), and
    the checkpoint format of every run directory written so far.
    """

    params: Parts
    stats: Parts
    opt_state: Parts
    step: chex.Array
    slots: Any = ()


class TrainState(NamedTuple):
    """Everything that changes during training; a pytree of arrays.

    Attributes:
      parts: ``Parts(stem, units)`` of ``PartState``: each part's params,
        stats (BatchNorm's running statistics; empty for most networks) and
        its own optimizer state, so every unit is an independent learner.
        ``units`` is one stacked ``PartState`` for stacked units, else a
        tuple of K.
      step: int32 scalar, steps taken.
      slots: the pipelined schedule's carry (``sidjax.schedule``): unit k's
        pending input for k = 1..K-1, stacked or a tuple like the units;
        ``()`` in the synchronous schedule.
    """

    parts: Parts
    step: chex.Array
    slots: Any = ()

    @property
    def params(self) -> Parts:
        """Every part's params, as ``Parts``."""
        return _field(self.parts, "params")

    @property
    def stats(self) -> Parts:
        """Every part's stats, as ``Parts``."""
        return _field(self.parts, "stats")

    @property
    def opt_state(self) -> Parts:
        """Every part's optimizer state, as ``Parts``."""
        return _field(self.parts, "opt_state")

    @property
    def variables(self) -> Variables:
        """``Variables(params, stats)``: what evaluation and prediction read."""
        return Variables(self.params, self.stats)

    def saved(self) -> SavedState:
        """This state as checkpoints hold it (a pipelined slot that carries nothing a method gave is saved
        without that field, as every checkpoint before it existed holds it)."""
        return SavedState(self.params, self.stats, self.opt_state, self.step, _slots_saved(self.slots))

    @classmethod
    def from_saved(cls, saved: SavedState) -> TrainState:
        """A state from its checkpoint form (``saved``'s ``Parts`` stacked or tuples alike)."""
        params, stats, opt = saved.params, saved.stats, saved.opt_state
        if held_apart(params.units):
            units = tuple(PartState(*u) for u in zip(params.units, stats.units, opt.units, strict=True))
        else:
            units = PartState(params.units, stats.units, opt.units)
        slots = _slots_loaded(saved.slots)
        return cls(Parts(PartState(params.stem, stats.stem, opt.stem), units), saved.step, slots)


class SavedSlot(NamedTuple):
    """A pipelined slot (``UnitInput``) as checkpoints hold it where its method gave nothing (``given`` empty)."""

    h: Any
    log_belief: Any
    labels: Any
    valid: Any


def _slots_saved(slots: Any) -> Any:
    def saved(node):
        empty = isinstance(node, UnitInput) and isinstance(node.given, tuple) and not node.given
        return SavedSlot(*node[:4]) if empty else node

    return jax.tree.map(saved, slots, is_leaf=lambda node: isinstance(node, UnitInput))


def _slots_loaded(slots: Any) -> Any:
    def loaded(node):
        return UnitInput(*node) if isinstance(node, SavedSlot) else node

    return jax.tree.map(loaded, slots, is_leaf=lambda node: isinstance(node, SavedSlot))


def held_apart(units: Any) -> bool:
    """Units held as a tuple of K values, not stacked (a stacked ``PartState`` is a NamedTuple, not a tuple of K)."""
    return type(units) is tuple


def _field(parts: Parts, name: str) -> Parts:
    units = parts.units
    units = tuple(getattr(u, name) for u in units) if held_apart(units) else getattr(units, name)
    return Parts(getattr(parts.stem, name), units)


def map_units(units: Any, fn, *rest: Any) -> Any:
    """Applies ``fn`` per unit: vmapped over stacked units, mapped over a tuple."""
    if held_apart(units):
        return tuple(fn(u, *(r[k] for r in rest)) for k, u in enumerate(units))
    return jax.vmap(fn)(units, *rest)


def new_state(variables: Variables, tx: optax.GradientTransformation, slots: Any = ()) -> TrainState:
    """A fresh ``TrainState`` at step 0: one optimizer state for the stem and one per unit."""
    params, stats = variables.params, variables.stats
    opt = Parts(tx.init(params.stem), map_units(params.units, tx.init))
    return TrainState.from_saved(SavedState(params, stats, opt, jnp.zeros((), jnp.int32), slots))


def keep_where(valid: Any, new: Any, old: Any) -> Any:
    """``new`` where ``valid``, else ``old`` (no select is traced when ``valid`` is the constant True)."""
    if valid is True:
        return new
    return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, old)


def step_part(
    tx: optax.GradientTransformation, part: PartState, grads: Any, stats: Any, valid: Any = True
) -> PartState:
    """One optimizer step of one part on its own state, with its new ``stats``; ``valid`` False keeps it."""
    updates, opt_state = tx.update(grads, part.opt_state, part.params)
    return keep_where(valid, PartState(optax.apply_updates(part.params, updates), stats, opt_state), part)


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
    parts = state.parts
    stem = step_part(tx, parts.stem, grads.stem, stats.stem)
    if valid is None:
        units = map_units(parts.units, lambda u, g, s: step_part(tx, u, g, s), grads.units, stats.units)
    else:
        units = map_units(parts.units, lambda u, g, s, v: step_part(tx, u, g, s, v),
                          grads.units, stats.units, valid)  # fmt: skip
    return state._replace(parts=Parts(stem, units), step=state.step + 1)


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
      template: ``template(variables) -> TrainState`` of shapes: what
        ``init`` gives, in the network's layout (how ``gather`` returns it and
        checkpoints hold it); nothing is computed, ``variables`` may be shapes.
      traceable: ``step`` is one program that may be traced inside another
        (``lax.scan`` over steps, ``vmap`` over seeds); False for stages,
        whose step dispatches one program per stage from Python.
      execution: the execution its step runs, resolved (``"vmap"``,
        ``"fused"`` or ``"sequential"``; stages walk their units:
        ``"sequential"``).
    """

    network: Network
    init: Callable[[Variables], TrainState]
    step: Callable[[TrainState, tuple[chex.Array, chex.Array], chex.PRNGKey], tuple[TrainState, dict]]
    place: Callable[[TrainState], TrainState]
    gather: Callable[[TrainState], TrainState]
    put: Callable[[Any], Any]
    memory_bytes: Callable[[TrainState, tuple[chex.Array, chex.Array], chex.PRNGKey], int]
    template: Callable[[Variables], TrainState]
    traceable: bool = True
    execution: str = "fused"
