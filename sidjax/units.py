"""One unit's local update, and the one walk over units that every local update of units in order uses.

A local method (SID, DGL) gives each unit its own loss, so a unit's update
needs only what it reads: the previous unit's stopped output, the previous
belief and the labels (``sidjax.network.UnitInput``). ``make_unit_update``
builds that update (forward, local gradient, optimizer step); ``walk`` runs
it over a list of units:

* chained (the synchronous schedule): unit k reads unit k-1's output of the
  same step;
* on given inputs (the pipelined schedule): unit k reads what unit k-1
  output one step earlier, so the K updates do not depend on each other.

The single-device ``sequential`` step is one walk inside one ``jit``; units in
stages (``sidjax.stages``) run one walk per stage, each its own program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.losses import SIDLoss
from sidjax.network import Network, UnitInput
from sidjax.state import PartState, step_part


class UnitOutput(NamedTuple):
    """What one unit's update produced.

    Attributes:
      next: the next unit's input (``Network.next_input``).
      loss: scalar local loss (0 where the input is not valid).
      logits: ``[B, N]``.
    """

    next: UnitInput
    loss: chex.Array
    logits: chex.Array


UnitUpdate = Callable[..., tuple[PartState, PartState | None, UnitOutput]]


def masked(value: chex.Array, valid: Any) -> chex.Array:
    """A unit's loss as reported: 0 where its input is not valid."""
    return jnp.where(valid, value, 0.0)


def make_unit_update(network: Network, tx: optax.GradientTransformation, loss: SIDLoss) -> UnitUpdate:
    """The local update of one unit, a pure function to be traced inside a step.

    ``update(k, unit, inp, alpha, key, stem=None, x=None) -> (unit, stem,
    output)``: ``k`` (static) is the unit's index, ``unit`` and ``stem`` are
    ``PartState``s, ``inp`` a ``UnitInput``, ``alpha`` a scalar, ``key`` the
    step's key or None. With ``stem`` given (the first unit of a network with
    a stem) the unit reads ``stem(x)`` and the stem steps on the same loss's
    gradient.
    """

    def update(k: int, unit: PartState, inp: UnitInput, alpha, key, stem: PartState | None = None, x=None):
        def objective(stem_params, unit_params):
            h, stem_stats = inp.h, None
            if stem is not None:
                h, stem_stats = network.apply_stem(stem_params, stem.stats, x, key)
            (h_out, logits), unit_stats = network.apply_unit(
                k, unit_params, unit.stats, inp._replace(h=h), key
            )
            value = loss.unit_loss(logits, inp.log_belief, inp.labels, alpha)
            return value, (h_out, logits, unit_stats, stem_stats)

        (value, (h_out, logits, unit_stats, stem_stats)), (g_stem, g_unit) = jax.value_and_grad(
            objective, (0, 1), has_aux=True
        )(None if stem is None else stem.params, unit.params)
        unit = step_part(tx, unit, g_unit, unit_stats, inp.valid)
        if stem is not None:
            stem = step_part(tx, stem, g_stem, stem_stats, inp.valid)
        nxt = network.next_input(inp, h_out, logits)
        return unit, stem, UnitOutput(nxt, masked(value, inp.valid), logits)

    return update


def vmapped_losses(
    network: Network,
    loss: SIDLoss,
    params: Any,
    stats: Any,
    inputs: UnitInput,
    alphas: chex.Array,
    key: chex.PRNGKey | None,
    h_axis: int | None,
    label_axis: int | None,
) -> tuple[chex.Array, chex.Array, chex.Array, Any]:
    """Every stacked unit's loss on its own input at once (``jax.vmap`` over units).

    Args:
      network: a network with stacked units.
      loss: the local loss.
      params, stats: stacked unit variables ``[K, ...]``.
      inputs: ``UnitInput`` whose fields are stacked ``[K, ...]``, except
        ``h`` when ``h_axis`` is None (every unit reads the same features)
        and ``labels`` when ``label_axis`` is None; ``valid`` may be True.
      alphas: ``[K]``.
      key: the step's key (unit k draws from its own fold), or None.

    Returns:
      ``(losses [K], logits [K, B, N], h_out [K, ...], stats [K, ...])``.
    """

    def one(k, p, s, h, log_belief, labels, alpha, valid):
        inp = UnitInput(h, log_belief, labels, valid)
        (h_out, logits), s = network.apply_unit(k, p, s, inp, key)
        return masked(loss.unit_loss(logits, log_belief, labels, alpha), valid), (h_out, logits, s)

    valid_axis = None if inputs.valid is True else 0
    axes = (0, 0, 0, h_axis, 0, label_axis, 0, valid_axis)
    losses, (h_out, logits, new_stats) = jax.vmap(one, in_axes=axes)(
        jnp.arange(network.num_units), params, stats, inputs.h, inputs.log_belief, inputs.labels, alphas,
        inputs.valid,
    )  # fmt: skip
    return losses, logits, h_out, new_stats


def walk(
    update: UnitUpdate,
    units: Sequence[PartState],
    indices: Sequence[int],
    inputs: UnitInput | Sequence[UnitInput],
    alphas: chex.Array,
    key: chex.PRNGKey | None,
    stem: PartState | None = None,
    x: chex.Array | None = None,
) -> tuple[list[PartState], PartState | None, list[UnitOutput]]:
    """Updates ``units`` one after another.

    Args:
      update: from ``make_unit_update``.
      units: the units to update, in order.
      indices: their indices in the network (for their structure, alpha and key).
      inputs: one ``UnitInput``: the first unit reads it and each later one
        reads its predecessor's output (chained); or one per unit (given in
        advance, as the pipelined schedule does).
      alphas: ``[K]``, every unit's alpha.
      key: the step's key, or None.
      stem: the stem's ``PartState`` if the first unit trains it, else None.
      x: the batch the stem reads.

    Returns:
      ``(units, stem, outputs)``. An ``optimization_barrier`` after each
      unit ties its output to its finished update, so that a scheduler that
      honours it starts unit k+1 only once unit k's activations are dead.
      A scheduler may still overlap some units; one program per unit
      (``placement="stages"``) holds the least (``experiments/bench_memory.py``
      measures both; RESULTS.md has the numbers).
    """
    chained = isinstance(inputs, UnitInput)
    inp = inputs if chained else None
    new_units, outputs = [], []
    for i, (unit, k) in enumerate(zip(units, indices, strict=True)):
        if not chained:
            inp = inputs[i]
        unit, new_stem, out = update(k, unit, inp, alphas[k], key, stem if i == 0 else None, x)
        if i == 0 and stem is not None:
            stem = new_stem
        (h, log_belief), unit = jax.lax.optimization_barrier(((out.next.h, out.next.log_belief), unit))
        out = out._replace(next=out.next._replace(h=h, log_belief=log_belief))
        new_units.append(unit)
        outputs.append(out)
        inp = out.next
    return new_units, stem, outputs
