"""One unit's local objective, written once, and the ways a local method's units run.

A local method (``sidjax.methods.LocalMethod``: SID, DGL, Forward-Forward,
the HSIC bottleneck, your own rule) gives each unit its own loss, computed
from what that unit sees (``UnitSeen``): its input, its output, its logits,
the labels and whatever the method gave every unit. No gradient crosses a
unit boundary, so a unit's update needs only what it reads. Every execution
calls the same ``unit_objective``:

* ``chain_losses``: one pass over the units in order, each reading what
  the previous one handed on (stopped), every unit's loss (the ``"fused"``
  execution); ``chain_inputs`` the same pass without losses or gradients
  (the two-phase step's first phase);
* ``vmapped_losses``: stacked units, each on its own input, in one
  ``jax.vmap`` (the ``"vmap"`` execution, the pipelined schedule);
* ``walk`` over ``make_unit_update``: units updated one after another, each
  its forward, local gradient and optimizer step (the ``"sequential"``
  execution; ``placement="stages"`` runs one walk per stage), chained (the
  synchronous schedule: unit k reads unit k-1's output of the same step) or
  on given inputs (the pipelined schedule: of the previous step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.losses import SIDLoss
from sidjax.network import Network, Parts, UnitInput, Variables, part_key, sg
from sidjax.state import PartState, step_part


class UnitSeen(NamedTuple):
    """What one unit's local loss is computed from (``LocalMethod.unit_loss``'s argument).

    Attributes:
      index: k, the unit's index (a traced integer when units are vmapped).
      input: the ``UnitInput`` it read: ``h``, ``log_belief`` (``log
        p_{k-1}``, stopped), ``labels [B]``, ``given`` (what the method gave
        every unit).
      output: its output ``h_out`` before the cut (its gradient reaches the
        unit, and the stem for unit 1 or on a shared trunk).
      logits: ``[B', N]``, its head's logits.
      key: the unit's key of this step (``fold_in(step_key, k)``, the key its
        dropout draws from: fold in your own constant before drawing), or None.
      alpha: the unit's fidelity weight (the run's alpha, per unit, at this step).
      loss: the run's ``SIDLoss`` (divergence, label smoothing).
    """

    index: Any
    input: UnitInput
    output: chex.Array
    logits: chex.Array
    key: chex.PRNGKey | None
    alpha: chex.Array
    loss: SIDLoss


class UnitOutput(NamedTuple):
    """What one unit's update produced.

    Attributes:
      next: the next unit's input (``LocalMethod.handed_on``).
      loss: scalar local loss (0 where the input is not valid).
      logits: ``[B, N]`` the step reports accuracy from (the rule's).
    """

    next: UnitInput
    loss: chex.Array
    logits: chex.Array


UnitUpdate = Callable[..., tuple[PartState, PartState | None, UnitOutput]]


class LocalRule(Protocol):
    """What the engine reads of a local method (``sidjax.LocalMethod`` is one; its docstring says more)."""

    def unit_loss(self, seen: UnitSeen) -> tuple[chex.Array, chex.Array]:
        """One unit's scalar loss and the ``[B, N]`` logits its step reports."""

    def give(self, network: Network, x: chex.Array, labels: chex.Array, key) -> tuple[chex.Array, Any]:
        """The batch the stem (or unit 1) reads, and what every unit is given besides."""

    def hand_on(self, network: Network, inp: UnitInput, h_out: chex.Array, logits: chex.Array) -> UnitInput:
        """What a unit hands the next, stopped."""


def masked(value: chex.Array, valid: Any) -> chex.Array:
    """A unit's loss as reported: 0 where its input is not valid."""
    return jnp.where(valid, value, 0.0)


def first_input(
    network: Network, method: LocalRule, x: chex.Array, labels: chex.Array, key, valid: Any = True
) -> tuple[chex.Array, UnitInput]:
    """``(x, inp)``: the batch as the method gives it (before the stem) and the first unit's input
    without the stem (``inp.h`` is that batch: the caller applies the stem)."""
    x, given = method.give(network, x, labels, key)
    return x, network.first_input(x, labels, valid, given)


def unit_objective(
    network: Network, method: LocalRule, loss: SIDLoss, k, params, stats, inp: UnitInput, alpha, key
) -> tuple[chex.Array, tuple[chex.Array, chex.Array, chex.Array, Any]]:
    """Unit k's local loss on ``inp``: ``(value, (h_out, logits, reported logits, stats))``; 0 where
    ``inp`` is not valid. ``key`` is the step's key (unit k's dropout and ``UnitSeen.key`` fold in k)."""
    (h_out, logits), stats = network.apply_unit(k, params, stats, inp, key)
    seen = UnitSeen(k, inp, h_out, logits, part_key(key, k), alpha, loss)
    value, reported = method.unit_loss(seen)
    return masked(value, inp.valid), (h_out, logits, reported, stats)


def make_unit_update(
    network: Network,
    method: LocalRule,
    tx: optax.GradientTransformation,
    loss: SIDLoss,
    refresh: bool = False,
) -> UnitUpdate:
    """The local update of one unit, a pure function to be traced inside a step.

    ``update(k, unit, inp, alpha, key, stem=None, x=None) -> (unit, stem,
    output)``: ``k`` (static) is the unit's index, ``unit`` and ``stem`` are
    ``PartState``s, ``inp`` a ``UnitInput``, ``alpha`` a scalar, ``key`` the
    step's key or None. With ``stem`` given (the first unit of a network with
    a stem) the unit reads ``stem(x)`` and the stem steps on the same loss's
    gradient. With ``refresh`` the unit hands on the output it gives after its
    update (one more forward pass), not the one its update used.
    """

    def update(k: int, unit: PartState, inp: UnitInput, alpha, key, stem: PartState | None = None, x=None):
        def objective(stem_params, unit_params):
            h, stem_stats = inp.h, None
            if stem is not None:
                h, stem_stats = network.apply_stem(stem_params, stem.stats, x, key)
            value, (h_out, logits, reported, unit_stats) = unit_objective(
                network, method, loss, k, unit_params, unit.stats, inp._replace(h=h), alpha, key
            )
            return value, (h_out, logits, reported, unit_stats, stem_stats)

        (value, (h_out, logits, reported, unit_stats, stem_stats)), (g_stem, g_unit) = jax.value_and_grad(
            objective, (0, 1), has_aux=True
        )(None if stem is None else stem.params, unit.params)
        unit = step_part(tx, unit, g_unit, unit_stats, inp.valid)
        if stem is not None:
            stem = step_part(tx, stem, g_stem, stem_stats, inp.valid)
        if refresh:  # what the updated unit (and stem) gives: the next unit reads that
            h = inp.h if stem is None else network.apply_stem(stem.params, stem.stats, x, key)[0]
            (h_out, logits), _ = network.apply_unit(k, unit.params, unit.stats, inp._replace(h=h), key)
        nxt = method.hand_on(network, inp, h_out, logits)
        return unit, stem, UnitOutput(nxt, value, reported)

    return update


def vmapped_losses(
    network: Network,
    method: LocalRule,
    loss: SIDLoss,
    params: Any,
    stats: Any,
    inputs: UnitInput,
    alphas: chex.Array,
    key: chex.PRNGKey | None,
    h_axis: int | None,
    label_axis: int | None,
) -> tuple[chex.Array, chex.Array, chex.Array, chex.Array, Any]:
    """Every stacked unit's loss on its own input at once (``jax.vmap`` over units).

    Args:
      network: a network with stacked units.
      method: the local method.
      loss: the run's local-loss settings.
      params, stats: stacked unit variables ``[K, ...]``.
      inputs: ``UnitInput`` whose fields are stacked ``[K, ...]``, except
        ``h`` when ``h_axis`` is None (every unit reads the same features)
        and ``labels`` and ``given`` when ``label_axis`` is None; ``valid``
        may be True.
      alphas: ``[K]``.
      key: the step's key (unit k draws from its own fold), or None.

    Returns:
      ``(losses [K], reported logits [K, B, N], h_out [K, ...], logits [K, B, N], stats [K, ...])``.
    """

    def one(k, p, s, h, log_belief, labels, alpha, valid, given):
        inp = UnitInput(h, log_belief, labels, valid, given)
        value, (h_out, logits, reported, s) = unit_objective(network, method, loss, k, p, s, inp, alpha, key)
        return value, (reported, h_out, logits, s)

    valid_axis = None if inputs.valid is True else 0
    axes = (0, 0, 0, h_axis, 0, label_axis, 0, valid_axis, label_axis)
    losses, (reported, h_out, logits, new_stats) = jax.vmap(one, in_axes=axes)(
        jnp.arange(network.num_units), params, stats, inputs.h, inputs.log_belief, inputs.labels, alphas,
        inputs.valid, inputs.given,
    )  # fmt: skip
    return losses, reported, h_out, logits, new_stats


class Pass(NamedTuple):
    """One pass of a local method over the units, in order.

    Attributes:
      losses: ``[K]``, every unit's local loss.
      logits: ``[K, B, N]``, what each unit's rule reports.
      inputs: what each unit read: a ``UnitInput`` whose ``h`` and
        ``log_belief`` are stacked ``[K, ...]`` for stacked units (the
        labels and what the method gave are every unit's), else a list of K.
      stats: the units' stats after the pass (stacked or a tuple).
    """

    losses: chex.Array
    logits: chex.Array
    inputs: Any
    stats: Any


def chain_losses(
    network: Network, method: LocalRule, loss: SIDLoss, variables: Variables, inp: UnitInput, alphas, key
) -> Pass:
    """The units in order from ``inp`` (the first unit's input, after the stem), each reading what the
    previous one handed on (``hand_on`` changes its features and belief; the labels and what the method
    gave stay), each unit's local loss (stacked units: one ``lax.scan``)."""
    return _chain(network, method, variables, inp, key, lambda k, p, s, i, a: unit_objective(
        network, method, loss, k, p, s, i, a, key), alphas)  # fmt: skip


def chain_inputs(
    network: Network, method: LocalRule, variables: Variables, inp: UnitInput, key, train: bool = True
) -> Any:
    """Every unit's input from one pass in order, without gradients (phase 1 of the two-phase step;
    stacked units: a ``UnitInput`` of ``[K, ...]``). Its stats are those phase 2 computes again."""
    variables = jax.tree.map(sg, variables)

    def forward(k, p, s, i, alpha):
        (h_out, logits), s = network.apply_unit(k, p, s, i, key, train=train)
        return jnp.zeros(()), (h_out, logits, logits, s)

    return _chain(network, method, variables, inp, key, forward, jnp.zeros((network.num_units,))).inputs


def _chain(network, method, variables, inp: UnitInput, key, objective, alphas) -> Pass:
    params, stats = variables.params.units, variables.stats.units

    def one(k, p, s, h, log_belief, alpha):
        unit_inp = inp._replace(h=h, log_belief=log_belief)
        value, (h_out, logits, reported, s) = objective(k, p, s, unit_inp, alpha)
        nxt = method.hand_on(network, unit_inp, h_out, logits)
        return (nxt.h, nxt.log_belief), (value, reported, (h, log_belief), s)

    if network.stacked:
        _, (losses, reported, (h, log_belief), unit_stats) = jax.lax.scan(
            lambda carry, xs: one(xs[0], xs[1], xs[2], *carry, xs[3]),
            (inp.h, inp.log_belief),
            (jnp.arange(network.num_units), params, stats, alphas),
        )
        return Pass(losses, reported, inp._replace(h=h, log_belief=log_belief), unit_stats)
    carry, outs = (inp.h, inp.log_belief), []
    for k in range(network.num_units):
        carry, out = one(k, params[k], stats[k], *carry, alphas[k])
        outs.append(out)
    inputs = [inp._replace(h=h, log_belief=log_belief) for _, _, (h, log_belief), _ in outs]
    return Pass(jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs]), inputs,
                tuple(o[3] for o in outs))  # fmt: skip


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


def local_objective(network: Network, method: LocalRule, loss: SIDLoss, execution: str = "fused") -> Callable:
    """A local method's objective over the whole network: the sum of its K unit losses, one gradient.

    ``objective(params, stats, x, labels, key) -> (value, (losses [K], logits [K, B, N], stats))``;
    ``execution``: ``"fused"`` (one pass, stopped at the cuts) or ``"vmap"`` (two-phase: a pass without
    gradients gives every unit its input, then every stacked unit's loss at once; equal, tested).
    """

    def objective(params, stats, x, labels, key):
        losses, logits, new_stats = local_losses(
            network, method, Variables(params, stats), x, labels, loss, key=key, execution=execution
        )
        return losses.sum(), (losses, logits, new_stats)

    return objective


def local_losses(
    network: Network,
    method: LocalRule,
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
      method: the local method.
      x: ``[B, ...]``; labels: ``[B]``.
      loss: local-loss hyperparameters.
      key: the step's key (for dropout, and the method's draws), or None.
      execution: ``"vmap"`` (two-phase; stacked units) or ``"fused"``.

    Returns:
      ``(losses [K], logits [K, B, N], stats)``; ``losses[k]`` is unit k's
      batch mean, ``logits`` what each unit's rule reports, ``stats`` the
      variables' stats after this forward pass.
    """
    alphas = loss.alphas(network.num_units)
    params, stats = variables.params, variables.stats
    x, inp = first_input(network, method, x, labels, key)
    h0, stem_stats = network.apply_stem(params.stem, stats.stem, x, key)
    if execution == "fused":
        done = chain_losses(network, method, loss, variables, inp._replace(h=h0), alphas, key)
        return done.losses, done.logits, Parts(stem_stats, done.stats)
    if execution != "vmap" or not network.stacked:
        raise ValueError(
            f"local_losses: execution 'vmap' needs stacked units, else 'fused'; got {execution!r}"
        )
    inputs = chain_inputs(network, method, variables, inp._replace(h=sg(h0)), key)
    if network.cut_features:  # unit 1 reads the stem's output, so the stem trains with it
        feats, h_axis = inputs.h.at[0].set(h0), 0
    else:  # shared trunk: every unit reads z, the extractor gets the sum
        feats, h_axis = h0, None
    inputs = inp._replace(h=feats, log_belief=inputs.log_belief)
    losses, reported, _, _, unit_stats = vmapped_losses(
        network, method, loss, params.units, stats.units, inputs, alphas, key, h_axis, None
    )
    return losses, reported, Parts(stem_stats, unit_stats)
