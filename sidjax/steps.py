"""The training step of every method, execution and schedule as one pure function.

``make_step(...)`` returns ``step(state, (x [B, ...], labels [B]), key) ->
(state, metrics)``, traceable (``sidjax.make_learner`` jits it or runs it
inside a scan). ``key`` is the run's train key: the step folds in
``state.step`` (``step_key``), augments the batch with ``step_key`` and gives
unit k ``fold_in(step_key, k)``, the stem ``fold_in(step_key, K)``.

How a local (SID/DGL) step groups its K unit updates into computation, all
numerically equal (tested):

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

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.losses import SIDLoss, label_distribution
from sidjax.methods import MethodSpec
from sidjax.network import Network, Parts, UnitInput, Variables, sg
from sidjax.noprop import noprop_objective
from sidjax.schedule import next_slots, pipelined_losses, unit_inputs
from sidjax.state import PartState, TrainState, apply_gradients
from sidjax.units import make_unit_update, vmapped_losses, walk

Augment = Callable[[chex.PRNGKey, chex.Array], chex.Array]
Batch = tuple[chex.Array, chex.Array]
StepFn = Callable[[TrainState, Batch, chex.PRNGKey], tuple[TrainState, dict]]


def local_losses(
    network: Network,
    variables: Variables,
    x: chex.Array,
    labels: chex.Array,
    loss: SIDLoss,
    *,
    key: chex.PRNGKey | None = None,
    execution: str = "vmap",
) -> tuple[chex.Array, chex.Array, Parts]:
    """All K local losses of the synchronous schedule in one differentiable function.

    Args:
      network, variables: the model.
      x: ``[B, ...]``; labels: ``[B]``.
      loss: local-loss hyperparameters (``docs/method.md``, equation 1).
      key: the step's key (for dropout), or None.
      execution: ``"vmap"`` (two-phase; stacked units) or ``"fused"``.

    Returns:
      ``(losses [K], logits [K, B, N], stats)``; ``losses[k]`` is unit k's
      batch mean, ``stats`` the variables' stats after this forward pass.
    """
    alphas = loss.alphas(network.num_units)
    if execution == "fused":
        chain = network.forward(variables, x, labels, key, train=True, cut=True)
        losses = jax.vmap(lambda lg, pv, a: loss.unit_loss(lg, pv, labels, a))(
            chain.logits, chain.prev_log_beliefs, alphas
        )
        return losses, chain.logits, chain.stats
    if execution != "vmap" or not network.stacked:
        raise ValueError(
            f"local_losses: execution 'vmap' needs stacked units, else 'fused'; got {execution!r}"
        )
    params, stats = variables.params, variables.stats
    h0, stem_stats = network.apply_stem(params.stem, stats.stem, x, key)
    teacher = network.run_units(  # phase 1: no gradient; its stats are those phase 2 computes again
        jax.tree.map(sg, variables), network.first_input(sg(h0), labels), key, train=True, cut=True
    )
    if network.cut_features:  # unit 1 reads the stem's output, so the stem trains with it
        feats, h_axis = teacher.inputs.at[0].set(h0), 0
    else:  # shared trunk: every unit reads z, the extractor gets the sum
        feats, h_axis = h0, None
    inputs = UnitInput(feats, teacher.prev_log_beliefs, labels)
    losses, logits, _, unit_stats = vmapped_losses(
        network, loss, params.units, stats.units, inputs, alphas, key, h_axis, None
    )
    return losses, logits, Parts(stem_stats, unit_stats)


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
    spec: MethodSpec,
    loss: SIDLoss,
    execution: str,
    pipelined: bool = False,
    augment: Augment | None = None,
) -> StepFn:
    """``step(state, (x, labels), key) -> (state, metrics)`` for a resolved method and execution.

    Callers check the rules first (``sidjax.make_learner`` does); ``loss`` is
    the method's (``spec.loss``). ``metrics``: ``loss`` (the objective),
    ``ce`` and ``accuracy`` of the last unit on the batch it saw,
    ``unit_loss [K]`` (zeros for BP) and ``unit_accuracy [K]``. A scheduled
    alpha (``SIDLoss.at_step``) takes its value at ``state.step``.
    """

    def build(loss):
        if spec.local and execution == "sequential":
            return _walk_step(network, tx, loss, pipelined)
        if pipelined:
            return _pipelined_step(network, tx, loss, vmap=execution == "vmap")
        return _gradient_step(tx, make_objective(network, spec, loss, execution))

    fixed = None if loss.scheduled else build(loss)

    def step(state, batch, key):
        x, labels = batch
        key = step_key(key, state.step)
        if augment is not None:
            x = augment(key, x)
        inner = fixed or build(loss.at_step(state.step))  # a scheduled alpha: its value at this step, traced
        return inner(state, x, labels, key)

    return step


def make_objective(network: Network, spec: MethodSpec, loss: SIDLoss, execution: str = "fused") -> Callable:
    """The synchronous step's one differentiable objective (every execution but ``"sequential"``).

    ``objective(params, stats, x, labels, key) -> (value, (unit_losses [K],
    logits [K, B, N], stats))``: the sum of the local losses, or BP's
    cross-entropy of the last unit (``unit_losses`` zeros), or NoProp's
    denoising losses (``sidjax.noprop``; its "logits" are the units' outputs).
    """
    if spec.objective == "noprop":
        return noprop_objective(network)
    if not spec.local:
        return _bp_objective(network, loss, spec.remat)
    return _local_objective(network, spec.loss(loss), execution)


def _bp_objective(network, loss, remat):
    def objective(params, stats, x, labels, key):
        chain = network.forward(Variables(params, stats), x, labels, key, train=True, cut=False, remat=remat)
        target = label_distribution(labels, network.num_classes, loss.label_smoothing)
        value = optax.softmax_cross_entropy(chain.logits[-1], target).mean()
        return value, (jnp.zeros((network.num_units,)), chain.logits, chain.stats)

    return objective


def _local_objective(network, loss, execution):
    def objective(params, stats, x, labels, key):
        losses, logits, stats = local_losses(network, Variables(params, stats), x, labels, loss, key=key,
                                             execution=execution)  # fmt: skip
        return losses.sum(), (losses, logits, stats)

    return objective


def _gradient_step(tx, objective):
    """One gradient of ``objective(params, stats, x, labels, key)`` and one update of every part."""

    def inner(state, x, labels, key):
        (value, (losses, logits, stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state.stats, x, labels, key
        )
        return apply_gradients(state, grads, stats, tx), batch_metrics(value, losses, logits, labels)

    return inner


def _pipelined_step(network, tx, loss, vmap):
    grad_fn = jax.value_and_grad(pipelined_losses, argnums=2, has_aux=True)

    def inner(state, x, labels, key):
        (value, (losses, logits, stats, slots, valid, unit_labels)), grads = grad_fn(
            network, loss, state.params, state.stats, x, labels, state.slots, key, vmap
        )
        new = apply_gradients(state, grads, stats, tx, valid)._replace(slots=slots)
        return new, batch_metrics(value, losses, logits, unit_labels, valid)

    return inner


def _walk_step(network, tx, loss, pipelined):
    """Both schedules as one walk over the units inside the program (``sidjax.units.walk``)."""
    update = make_unit_update(network, tx, loss)
    alphas = loss.alphas(network.num_units)

    def inner(state, x, labels, key):
        units, stem = network.unit_list(state.parts.units), trained_stem(network, state)
        inputs = network.first_input(x, labels)
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
