"""One unit's local update, and the one walk over units that every local step uses.

A local method (SID, DGL) gives each unit its own loss, so a unit's update
needs only what it reads: the previous unit's stopped output, the previous
belief and the labels. ``make_unit_update`` builds that update (forward,
local gradient, optimizer step); ``walk`` runs it over a list of units:

* chained (the synchronous schedule): unit k reads unit k-1's output of the
  same step;
* on given inputs (the pipelined schedule): unit k reads what unit k-1
  output one step earlier, so the K updates do not depend on each other.

The single-device ``sequential`` step is one walk inside one ``jit``; the
device pipeline (``sidjax.pipeline``) runs one walk per stage, each stage its
own program on its own device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.losses import SIDLoss, uniform_log_belief
from sidjax.network import Network
from sidjax.state import update_part

sg = jax.lax.stop_gradient


class Part(NamedTuple):
    """A trainable part (the stem or one unit): its params and its own optimizer state."""

    params: Any
    opt_state: Any


class UnitInput(NamedTuple):
    """What one unit reads.

    Attributes:
      h: features ``[B, ...]``: the previous unit's stopped output (the
        batch itself for the first unit; a unit that trains the stem reads
        the stem's output of ``x`` instead).
      log_belief: ``[B, N]``, ``log p_{k-1}`` (uniform for the first unit).
      labels: ``[B]``, the labels of the batch ``h`` came from.
      valid: bool scalar, or the Python constant True where every input is
        valid (the synchronous schedule: no masking is traced); False for a
        pipelined slot not filled yet (the unit then keeps its params and
        optimizer state).
    """

    h: chex.Array
    log_belief: chex.Array
    labels: chex.Array
    valid: chex.Array


class UnitOutput(NamedTuple):
    """What one unit's update produced.

    Attributes:
      next: the next unit's input: ``sg(h_out)``, ``log_softmax(logits)``
        and this input's labels and validity.
      loss: scalar local loss (0 where the input is not valid).
      logits: ``[B, N]``.
    """

    next: UnitInput
    loss: chex.Array
    logits: chex.Array


UnitUpdate = Callable[..., tuple[Part, Part | None, UnitOutput]]


def first_input(network: Network, x: chex.Array, labels: chex.Array) -> UnitInput:
    """The first unit's input: the batch ``x [B, ...]``, the uniform belief, ``labels [B]``."""
    return UnitInput(x, uniform_log_belief(x.shape[0], network.num_classes), labels, True)


def make_unit_update(network: Network, tx: optax.GradientTransformation, loss: SIDLoss) -> UnitUpdate:
    """The local update of one unit, a pure function to be traced inside a step.

    ``update(k, unit, inp, alpha, stem=None, x=None) -> (unit, stem, output)``:
    ``k`` (static) is the unit's index, ``unit`` and ``stem`` are ``Part``s,
    ``inp`` a ``UnitInput``, ``alpha`` a scalar. With ``stem`` given (the
    first unit of a network with a stem) the unit reads ``stem(x)`` and the
    stem steps on the same loss's gradient.
    """

    def update(k: int, unit: Part, inp: UnitInput, alpha: chex.Numeric, stem: Part | None = None, x=None):
        def objective(stem_params, unit_params):
            h = inp.h if stem is None else network.stem(stem_params, x)
            h_out, logits = network.unit(k, unit_params, h, inp.log_belief)
            value = loss.per_example(logits, inp.log_belief, inp.labels, alpha).mean()
            return value, (h_out, logits)

        (value, (h_out, logits)), (g_stem, g_unit) = jax.value_and_grad(objective, (0, 1), has_aux=True)(
            None if stem is None else stem.params, unit.params
        )
        unit = Part(*update_part(tx, unit.params, g_unit, unit.opt_state, inp.valid))
        if stem is not None:
            stem = Part(*update_part(tx, stem.params, g_stem, stem.opt_state, inp.valid))
        nxt = UnitInput(sg(h_out), jax.nn.log_softmax(logits), inp.labels, inp.valid)
        return unit, stem, UnitOutput(nxt, jnp.where(inp.valid, value, 0.0), logits)

    return update


def vmapped_losses(
    network: Network,
    loss: SIDLoss,
    units: Any,
    inputs: UnitInput,
    alphas: chex.Array,
    h_axis: int | None,
    label_axis: int | None,
) -> tuple[chex.Array, chex.Array, chex.Array]:
    """Every stacked unit's loss on its own input at once (``jax.vmap`` over units).

    Args:
      network: a network with stacked units.
      loss: the local loss.
      units: stacked unit params ``[K, ...]``.
      inputs: ``UnitInput`` whose fields are stacked ``[K, ...]``, except
        ``h`` when ``h_axis`` is None (every unit reads the same features)
        and ``labels`` when ``label_axis`` is None; ``valid`` may be True.
      alphas: ``[K]``.

    Returns:
      ``(losses [K], logits [K, B, N], h_out [K, ...])``.
    """

    def one(unit_params, h, log_belief, labels, alpha, valid):
        h_out, logits = network.unit(0, unit_params, h, log_belief)
        value = loss.per_example(logits, log_belief, labels, alpha).mean()
        return jnp.where(valid, value, 0.0), (h_out, logits)

    valid_axis = None if inputs.valid is True else 0
    axes = (0, h_axis, 0, label_axis, 0, valid_axis)
    losses, (h_out, logits) = jax.vmap(one, in_axes=axes)(
        units, inputs.h, inputs.log_belief, inputs.labels, alphas, inputs.valid
    )
    return losses, logits, h_out


def walk(
    update: UnitUpdate,
    network: Network,
    units: Sequence[Part],
    indices: Sequence[int],
    inputs: UnitInput | Sequence[UnitInput],
    alphas: chex.Array,
    stem: Part | None = None,
    x: chex.Array | None = None,
) -> tuple[list[Part], Part | None, list[UnitOutput]]:
    """Updates ``units`` one after another.

    Args:
      update: from ``make_unit_update``.
      network: the network the units belong to.
      units: the units to update, in order.
      indices: their indices in the network (for their structure and alpha).
      inputs: one ``UnitInput``: the first unit reads it and each later one
        reads its predecessor's output (chained); or one per unit (given in
        advance, as the pipelined schedule does).
      alphas: ``[K]``, every unit's alpha.
      stem: the stem's ``Part`` if the first unit trains it, else None.
      x: the batch the stem reads.

    Returns:
      ``(units, stem, outputs)``. An ``optimization_barrier`` after each
      unit ties its output to its finished update, so that a scheduler that
      honours it starts unit k+1 only once unit k's activations are dead.
      XLA:CPU (jax 0.10.2) overlaps some units anyway: ViT-Tiny at K = 8,
      batch 64, needs 0.26x BP's memory in this one program, 0.19x with
      one program per unit (``placement="stages"``; README, "Memory and
      time against K").
    """
    chained = isinstance(inputs, UnitInput)
    inp = inputs if chained else None
    new_units, outputs = [], []
    for i, (unit, k) in enumerate(zip(units, indices, strict=True)):
        if not chained:
            inp = inputs[i]
        unit, new_stem, out = update(k, unit, inp, alphas[k], stem if i == 0 else None, x)
        if i == 0 and stem is not None:
            stem = new_stem
        (h, log_belief), unit = jax.lax.optimization_barrier(((out.next.h, out.next.log_belief), unit))
        out = out._replace(next=out.next._replace(h=h, log_belief=log_belief))
        new_units.append(unit)
        outputs.append(out)
        inp = out.next
    return new_units, stem, outputs
