"""Training steps for every network, method and schedule, with one contract.

``step(state, batch, key) -> (state, metrics)`` where ``batch = (x [B, H, W,
C], labels [B])`` and ``key`` is the run's train key (the step folds in
``state.step`` itself, for augmentation). Every step is one ``jax.jit``
program: gradient, optimizer update and state replacement together.

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
step) or pipelined (unit k reads unit k-1's output of the previous step, kept
in ``TrainState.slots``; no unit waits for another).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss, label_distribution
from sidjax.methods import MethodSpec, get_method
from sidjax.network import NetParams, Network
from sidjax.pipelined import next_slots, pipelined_losses, unit_inputs
from sidjax.state import TrainState, apply_gradients, state_units
from sidjax.units import Part, UnitInput, first_input, make_unit_update, vmapped_losses, walk

EXECUTIONS: tuple[str, ...] = ("auto", "vmap", "fused", "sequential")
Augment = Callable[[chex.PRNGKey, chex.Array], chex.Array]
StepFn = Callable[[TrainState, tuple[chex.Array, chex.Array], chex.PRNGKey], tuple[TrainState, dict]]
sg = jax.lax.stop_gradient

# "auto" execution of a local method, chosen from measurements (experiments/bench_memory.py,
# experiments/bench_step.py): the shared trunk vmaps its stacked modules (SID/BP step time 1.004 on
# a 2-core CPU); blockwise networks walk their units in one program, the mode with a memory saving
# (ViT-Tiny K = 8: 0.26x BP's memory at 0.92x its step time; README.md, "Memory and time
# against K"). Same choice on every backend until an accelerator measurement says otherwise
# (experiments/device_check.sh measures all three there).
AUTO_EXECUTION: dict[str, str] = {"trunk": "vmap", "blockwise": "sequential"}


def local_losses(
    network: Network, params: NetParams, x: chex.Array, labels: chex.Array, loss: SIDLoss, *, execution="vmap"
) -> tuple[chex.Array, chex.Array]:
    """All K local losses of the synchronous schedule in one differentiable function.

    Args:
      network, params: the model.
      x: ``[B, H, W, C]``; labels: ``[B]``.
      loss: local-loss hyperparameters (``docs/method.md``, equation 1).
      execution: ``"vmap"`` (two-phase; stacked units) or ``"fused"``.

    Returns:
      ``(losses [K], logits [K, B, N])``; ``losses[k]`` is unit k's batch mean.
    """
    alphas = loss.alphas(network.num_units)
    if execution == "fused":
        chain = network.chain(params, x, cut=True)
        logits, prev = chain.logits, chain.prev_log_beliefs
        losses = jax.vmap(lambda lg, pv, a: loss.per_example(lg, pv, labels, a).mean())(logits, prev, alphas)
        return losses, logits
    if execution != "vmap":
        raise ValueError(f"execution must be 'vmap' or 'fused' here, got {execution!r}")
    _check_vmap(network)
    h0 = network.stem(params.stem, x)
    teacher = network.run_units(sg(params.units), sg(h0), cut=True)  # phase 1: no gradient
    if network.cut_features:  # unit 1 reads the stem's output, so the stem trains with it
        feats, h_axis = teacher.inputs.at[0].set(h0), 0
    else:  # shared trunk: every unit reads z, the extractor gets the sum
        feats, h_axis = h0, None
    inputs = UnitInput(feats, teacher.prev_log_beliefs, labels, True)
    losses, logits, _ = vmapped_losses(network, loss, params.units, inputs, alphas, h_axis, None)
    return losses, logits


def _check_vmap(network: Network) -> None:
    if not network.stacked:
        raise ConfigError(
            f"execution 'vmap' needs identical (stacked) units; {network.name} with K={network.num_units} "
            "has blocks of different structure: use 'fused' or 'sequential'",
            "execution",
        )


def check_method(network: Network, spec: MethodSpec) -> None:
    """``ConfigError`` where ``network`` was not built for ``spec`` (DGL's heads read no belief)."""
    spec.check_mode("blockwise" if network.cut_features else "trunk")
    if spec.local and not spec.belief_input and network.belief_input:
        raise ConfigError(
            f"method {spec.name!r} needs heads without belief input (build the network with belief_input=False)",
            "method",
        )


def resolve_execution(network: Network, spec: MethodSpec, execution: str, pipelined: bool = False) -> str:
    """The execution a step uses: ``"auto"`` from ``AUTO_EXECUTION``; ``ConfigError`` where one cannot apply."""
    if execution not in EXECUTIONS:
        raise ConfigError(f"execution must be one of {EXECUTIONS}, got {execution!r}", "execution")
    if pipelined and not (spec.local and network.cut_features):
        raise ConfigError(
            "the pipelined schedule needs a blockwise network and a local method (sid or dgl): "
            "a shared trunk or backprop has a backward pass across units",
            "pipelined",
        )
    if not spec.local:
        return "fused"  # backprop has a single global loss
    if execution == "auto":
        return AUTO_EXECUTION["blockwise" if network.cut_features else "trunk"]
    if execution == "vmap":
        _check_vmap(network)
    if execution == "sequential" and not network.cut_features:
        raise ConfigError(
            "execution 'sequential' needs a blockwise network: in the shared trunk every module's "
            "gradient reaches the extractor; use 'vmap' or 'fused'",
            "execution",
        )
    return execution


def _bp_objective(network, params, x, labels, loss, remat):
    logits = network.chain(params, x, cut=False, remat=remat).logits
    target = label_distribution(labels, network.num_classes, loss.label_smoothing)
    return optax.softmax_cross_entropy(logits[-1], target).mean(), (jnp.zeros((network.num_units,)), logits)


def make_grad_fn(
    network: Network, method: str, loss: SIDLoss, execution: str = "auto"
) -> Callable[[NetParams, chex.Array, chex.Array], tuple[tuple[chex.Array, Any], NetParams]]:
    """``grad_fn(params, x, labels) -> ((objective, (unit_losses [K], logits)), grads)``.

    The synchronous schedule's one global gradient; ``"sequential"``
    execution never forms one (use ``make_train_step``).
    """
    spec = get_method(method)
    check_method(network, spec)
    loss = spec.loss(loss)
    execution = resolve_execution(network, spec, execution)
    if execution == "sequential":
        raise ConfigError("'sequential' execution has no single gradient function; use make_train_step")

    def objective(params, x, labels):
        if not spec.local:
            return _bp_objective(network, params, x, labels, loss, remat=spec.remat)
        losses, logits = local_losses(network, params, x, labels, loss, execution=execution)
        return losses.sum(), (losses, logits)

    return jax.value_and_grad(objective, has_aux=True)


def batch_metrics(objective, unit_losses, logits, labels) -> dict[str, chex.Array]:
    """``loss`` (the objective), ``ce`` and ``accuracy`` of the last unit, ``module_loss [K]``."""
    last = logits[-1]
    return {
        "loss": objective,
        "ce": optax.softmax_cross_entropy_with_integer_labels(last, labels).mean(),
        "accuracy": (last.argmax(-1) == labels).mean(),
        "module_loss": unit_losses,
    }


def make_train_step(
    network: Network,
    tx: optax.GradientTransformation,
    method: str = "sid",
    loss: SIDLoss = SIDLoss(),
    *,
    execution: str = "auto",
    pipelined: bool = False,
    augment: Augment | None = None,
    donate: bool = False,
) -> StepFn:
    """Builds ``step(state, (x, labels), key) -> (state, metrics)``, one jitted program.

    Args:
      network: the static network (shared-trunk or blockwise).
      tx: optax optimizer, applied per part (stem, each unit).
      method: a key of ``sidjax.METHODS``.
      loss: local-loss hyperparameters (BP uses only ``label_smoothing``).
      execution: a key of ``EXECUTIONS`` (see the module docstring).
      pipelined: the pipelined schedule (blockwise, local methods); the
        state needs ``slots`` (``sidjax.pipelined.init_slots``).
      augment: optional ``augment(key, x) -> x``, run with ``fold_in(key, step)``.
      donate: donate the input state's buffers (training loops).

    Returns:
      The step. ``metrics``: ``loss`` (the objective), ``ce`` and ``accuracy``
      of the last unit on the batch it saw, ``module_loss [K]`` (zeros for BP).
    """
    spec = get_method(method)
    check_method(network, spec)
    loss = spec.loss(loss)
    execution = resolve_execution(network, spec, execution, pipelined)
    if execution == "sequential":
        inner = _walk_step(network, tx, loss, pipelined)
    elif pipelined:
        inner = _pipelined_grad_step(network, tx, loss, vmap=execution == "vmap")
    else:
        inner = _grad_step(network, tx, make_grad_fn(network, method, loss, execution))

    def step(state, batch, key):
        x, labels = batch
        if augment is not None:
            x = augment(jax.random.fold_in(key, state.step), x)
        return inner(state, x, labels)

    return jax.jit(step, donate_argnums=(0,) if donate else ())


def _grad_step(network, tx, grad_fn):
    def inner(state, x, labels):
        (objective, (unit_losses, logits)), grads = grad_fn(state.params, x, labels)
        return apply_gradients(state, grads, tx), batch_metrics(objective, unit_losses, logits, labels)

    return inner


def _pipelined_grad_step(network, tx, loss, vmap):
    grad_fn = jax.value_and_grad(pipelined_losses, argnums=1, has_aux=True)

    def inner(state, x, labels):
        (objective, (losses, logits, slots, valid, last_labels)), grads = grad_fn(
            network, state.params, x, labels, state.slots, loss, vmap
        )
        new = apply_gradients(state, grads, tx, valid)._replace(slots=slots)
        return new, batch_metrics(objective, losses, logits, last_labels)

    return inner


def _walk_step(network, tx, loss, pipelined):
    """Both schedules as one walk over the units inside the program (``sidjax.units.walk``)."""
    update = make_unit_update(network, tx, loss)
    alphas = loss.alphas(network.num_units)
    has_stem = network.stem_def is not None

    def inner(state, x, labels):
        unit_params, unit_opts = state_units(network, state)
        units = [Part(p, o) for p, o in zip(unit_params, unit_opts, strict=True)]
        stem = Part(state.params.stem, state.opt_state.stem) if has_stem else None
        inputs = first_input(network, x, labels)
        if pipelined:
            inputs = unit_inputs(network, state.slots, inputs._replace(valid=jnp.asarray(True)))
        units, stem, outputs = walk(update, network, units, range(network.num_units), inputs, alphas, stem, x)
        stem = stem or Part(state.params.stem, state.opt_state.stem)
        new = TrainState(
            NetParams(stem.params, network.join_units([u.params for u in units])),
            NetParams(stem.opt_state, network.join_units([u.opt_state for u in units])),
            state.step + 1,
            next_slots(network, state.slots, [o.next for o in outputs]) if pipelined else state.slots,
        )
        losses = jnp.stack([o.loss for o in outputs])
        logits = jnp.stack([o.logits for o in outputs])
        return new, batch_metrics(losses.sum(), losses, logits, outputs[-1].next.labels)

    return inner


def step_memory_bytes(step: StepFn, state: TrainState, batch: tuple, key: chex.PRNGKey) -> int:
    """XLA's compiled memory of one training step beyond its arguments, in bytes.

    The params, optimizer state and batch it is given are arguments, common to
    all methods, and not counted; see ``memory_beyond_arguments``.
    """
    return memory_beyond_arguments(step.lower(state, batch, key).compile())


def memory_beyond_arguments(compiled: jax.stages.Compiled) -> int:
    """Temp buffers plus the outputs that do not reuse a donated argument's buffer, in bytes.

    Temp alone is not comparable between programs: donating the state moves
    the new state's buffers from the outputs into the temps (VGG-11, K = 1,
    batch 64 on XLA:CPU: temp 76.8 MiB without donation, 142.8 MiB with; this
    sum is 183.8 and 142.8 MiB).
    """
    m = compiled.memory_analysis()
    return m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
