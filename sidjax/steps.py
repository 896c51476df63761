"""The training step of every method, execution and schedule as one pure function.

``make_step(...)`` returns ``step(state, (x [B, ...], labels [B]), key) ->
(state, metrics)``, traceable (``sidjax.make_learner`` jits it or runs it
inside a scan). ``key`` is the run's train key: the step folds in
``state.step`` (``step_key``), augments the batch with ``step_key`` and gives
unit k ``fold_in(step_key, k)``, the stem ``fold_in(step_key, K)``.

How a local method's step (``sidjax.methods.LocalMethod``: SID, DGL,
Forward-Forward, the HSIC bottleneck, your rule) groups its K unit updates
into computation, all numerically equal (tested); a method with one
objective over the whole network runs ``"fused"``:

* ``"vmap"``: two-phase. A gradient-free teacher pass runs the chain; then
  every unit's loss is evaluated at once with ``jax.vmap`` over the stacked
  units. Needs identical (stacked) units.
* ``"fused"``: one pass with stop-gradients at the cuts, one ``grad``.
* ``"sequential"``: blockwise only; the units are walked one after another
  inside the program (``sidjax.units.walk``), each updating itself and
  handing its stopped output on, so a unit's activations die before the next
  unit runs.

Schedules (blockwise): synchronous (unit k reads unit k-1's output of this
step) or pipelined (``sidjax.schedule``: unit k reads unit k-1's output of
the previous step, kept in ``TrainState.slots``; no unit waits for another).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.losses import SIDLoss
from sidjax.network import Network, Parts
from sidjax.schedule import next_slots, pipelined_losses, unit_inputs
from sidjax.state import PartState, TrainState, apply_gradients
from sidjax.units import LocalRule, first_input, make_unit_update, walk

if TYPE_CHECKING:
    from sidjax.methods import Method

Augment = Callable[[chex.PRNGKey, chex.Array], chex.Array]
Batch = tuple[chex.Array, chex.Array]
StepFn = Callable[[TrainState, Batch, chex.PRNGKey], tuple[TrainState, dict]]


def batch_metrics(objective, unit_losses, logits, labels, valid=None) -> dict[str, chex.Array]:
    """``loss`` (the objective), ``ce`` and ``accuracy`` of the last unit, ``unit_loss [K]``, ``unit_accuracy [K]``.

    ``labels``: ``[B]``, or ``[K, B]`` where each unit saw its own batch (the
    pipelined schedule); ``valid [K]``: the units that had a batch (others count 0).
    """
    unit_labels = labels if labels.ndim == 2 else jnp.broadcast_to(labels, logits.shape[:2])
    unit_accuracy = (logits.argmax(-1) == unit_labels).mean(-1)
    last, labels = logits[-1], unit_labels[-1]
    return {
        "loss": objective,
        "ce": optax.softmax_cross_entropy_with_integer_labels(last, labels).mean(),
        "accuracy": (last.argmax(-1) == labels).mean(),
        "unit_loss": unit_losses,
        "unit_accuracy": unit_accuracy if valid is None else unit_accuracy * valid,
    }


def step_key(key: chex.PRNGKey, step: chex.Array) -> chex.PRNGKey:
    """The key of step ``step``: augmentation draws from it, part k from ``fold_in(step_key, k)``."""
    return jax.random.fold_in(key, step)


def make_step(
    network: Network,
    tx: optax.GradientTransformation,
    spec: Method,
    loss: SIDLoss,
    execution: str,
    pipelined: bool = False,
    augment: Augment | None = None,
    refresh: bool = False,
) -> StepFn:
    """``step(state, (x, labels), key) -> (state, metrics)`` for a resolved method and execution.

    Callers check the rules first (``sidjax.make_learner`` does); ``loss`` is
    the method's (``spec.loss``). ``metrics``: ``loss`` (the objective),
    ``ce`` and ``accuracy`` of the last unit on the batch it saw,
    ``unit_loss [K]`` (zeros for BP) and ``unit_accuracy [K]``. A scheduled
    alpha (``SIDLoss.at_step``) takes its value at ``state.step``.
    """

    def build(loss):
        if execution == "sequential":
            return _walk_step(network, spec, tx, loss, pipelined, refresh)
        if pipelined:
            return _pipelined_step(network, spec, tx, loss, vmap=execution == "vmap")
        return _gradient_step(tx, spec.make_objective(network, loss, execution))

    fixed = None if loss.scheduled else build(loss)

    def step(state, batch, key):
        x, labels = batch
        key = step_key(key, state.step)
        if augment is not None:
            x = augment(key, x)
        inner = fixed or build(loss.at_step(state.step))  # a scheduled alpha: its value at this step, traced
        return inner(state, x, labels, key)

    return step


def _gradient_step(tx, objective):
    """One gradient of ``objective(params, stats, x, labels, key)`` and one update of every part."""

    def inner(state, x, labels, key):
        (value, (losses, logits, stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state.stats, x, labels, key
        )
        return apply_gradients(state, grads, stats, tx), batch_metrics(value, losses, logits, labels)

    return inner


def _pipelined_step(network: Network, method: LocalRule, tx, loss, vmap):
    grad_fn = jax.value_and_grad(pipelined_losses, argnums=3, has_aux=True)

    def inner(state, x, labels, key):
        (value, (losses, logits, stats, slots, valid, unit_labels)), grads = grad_fn(
            network, method, loss, state.params, state.stats, x, labels, state.slots, key, vmap
        )
        new = apply_gradients(state, grads, stats, tx, valid)._replace(slots=slots)
        return new, batch_metrics(value, losses, logits, unit_labels, valid)

    return inner


def _walk_step(network: Network, method: LocalRule, tx, loss, pipelined, refresh=False):
    """Both schedules as one walk over the units inside the program (``sidjax.units.walk``)."""
    update = make_unit_update(network, method, tx, loss, refresh)
    alphas = loss.alphas(network.num_units)

    def inner(state, x, labels, key):
        units, stem = network.unit_list(state.parts.units), trained_stem(network, state)
        x, inputs = first_input(network, method, x, labels, key)
        if pipelined:
            inputs = unit_inputs(network, state.slots, inputs._replace(valid=jnp.asarray(True)))
        units, stem, outputs = walk(update, units, range(network.num_units), inputs, alphas, key, stem, x)
        new = state._replace(
            parts=Parts(stem or state.parts.stem, network.join_units(units)), step=state.step + 1
        )
        if pipelined:
            new = new._replace(slots=next_slots(network, state.slots, [o.next for o in outputs]))
        losses = jnp.stack([o.loss for o in outputs])
        logits = jnp.stack([o.logits for o in outputs])
        labels = jnp.stack([o.next.labels for o in outputs])
        valid = jnp.stack([jnp.asarray(o.next.valid, jnp.float32) for o in outputs]) if pipelined else None
        return new, batch_metrics(losses.sum(), losses, logits, labels, valid)

    return inner


def trained_stem(network: Network, state: TrainState) -> PartState | None:
    """The stem's ``PartState`` where the first unit trains it, None for a network without a stem."""
    return None if network.stem is None else state.parts.stem


def memory_beyond_arguments(compiled: jax.stages.Compiled) -> int:
    """Temp buffers plus the outputs that do not reuse a donated argument's buffer, in bytes.

    Temp alone is not comparable between programs: donating the state moves
    the new state's buffers from the outputs into the temps, so a donating
    program shows more temp memory for the same work.
    """
    m = compiled.memory_analysis()
    return m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
