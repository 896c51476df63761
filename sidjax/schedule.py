"""The pipelined schedule: unit k trains on what unit k-1 output one step earlier.

At step t unit k reads its *slot*: unit k-1's stopped output of step t-1,
with the labels of the batch it came from. The K updates of a step are then
independent of each other, so every unit updates at once and none waits for
another: no update locking. Unit k first trains at step k (0-based); before
that its slot is empty (``valid`` False) and it keeps its params. The fill
takes K-1 steps; after it nothing idles, and no microbatches are needed
because no backward pass crosses a unit boundary.

The slots are part of ``TrainState`` (checkpoints and resume keep them), one
per unit like the units themselves (stacked ``[K, ...]`` or a tuple of K).
Slot 0 is a placeholder of unit 1's input shape: unit 1 reads the fresh
batch. Keeping K slots lets stacked slots be sharded like the stacked units
and shifted with one ``jnp.roll``.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss
from sidjax.network import Network, Parts, UnitInput, Variables
from sidjax.units import LocalRule, chain_inputs, first_input, unit_objective, vmapped_losses


def init_slots(network: Network, method: LocalRule, variables: Variables, batch_size: int | None) -> Any:
    """K empty slots for batches of ``batch_size`` examples, shaped as ``method`` gives its units their inputs."""
    if batch_size is None:
        raise ConfigError("the pipelined schedule keeps one batch per unit: give make_learner a batch_size")
    x = jax.ShapeDtypeStruct((batch_size, *network.input_shape), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)

    def inputs(v, x, labels):
        x, inp = first_input(network, method, x, labels, jax.random.key(0))
        h0, _ = network.apply_stem(v.params.stem, v.stats.stem, x, train=False)
        return chain_inputs(network, method, v, inp._replace(h=h0), None, train=False)

    found = jax.eval_shape(inputs, variables, x, labels)

    def empty(inp):  # zeros, the uniform prior as belief, not valid
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), inp)
        prior = jnp.full(inp.log_belief.shape, -jnp.log(network.num_classes), inp.log_belief.dtype)
        return zeros._replace(log_belief=prior, valid=jnp.asarray(False))

    if network.stacked:  # one stacked slot [K, ...]
        one = empty(found._replace(h=_one(found.h), log_belief=_one(found.log_belief)))
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (network.num_units, *a.shape)), one)
    return tuple(empty(inp) for inp in found)


def _one(stacked: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(stacked.shape[1:], stacked.dtype)


def unit_inputs(network: Network, slots: Any, fresh: UnitInput) -> list[UnitInput]:
    """Every unit's input this step: ``fresh`` for unit 1, its slot for the others."""
    return [fresh, *network.unit_list(slots)[1:]]


def next_slots(network: Network, slots: Any, outputs: list[UnitInput]) -> Any:
    """Unit k's output becomes unit k+1's slot (slot 0 keeps its placeholder)."""
    return network.join_units([network.unit_values(slots, 0), *outputs[:-1]])


def pipelined_losses(
    network: Network,
    method: LocalRule,
    loss: SIDLoss,
    params: Parts,
    stats: Parts,
    x: chex.Array,
    labels: chex.Array,
    slots: Any,
    key: chex.PRNGKey | None,
    vmap: bool,
) -> tuple[chex.Array, tuple[chex.Array, chex.Array, Parts, Any, chex.Array, chex.Array]]:
    """Every unit's loss on its own input: the batch for unit 1, its slot for the others.

    Returns:
      ``(objective, (losses [K], logits [K, B, N], stats, new_slots, valid [K],
      labels [K, B]))``: each unit's own batch's labels.
    """
    alphas = loss.alphas(network.num_units)
    x, fresh = first_input(network, method, x, labels, key, jnp.asarray(True))
    h0, stem_stats = network.apply_stem(params.stem, stats.stem, x, key)
    fresh = fresh._replace(h=h0)
    if vmap:  # stacked: set slot 0 to the fresh input, one vmap, one roll
        inputs = jax.tree.map(lambda s, f: s.at[0].set(f), slots, fresh)
        losses, logits, h_out, raw, unit_stats = vmapped_losses(
            network, method, loss, params.units, stats.units, inputs, alphas, key, 0, 0
        )
        outputs = jax.vmap(lambda i, h, lg: method.hand_on(network, i, h, lg))(inputs, h_out, raw)
        new_slots = jax.tree.map(lambda a: jnp.roll(a, 1, axis=0), outputs)
        aux = (losses, logits, Parts(stem_stats, unit_stats), new_slots, inputs.valid, inputs.labels)
        return losses.sum(), aux
    inputs = unit_inputs(network, slots, fresh)
    losses, logits, outputs, unit_stats = [], [], [], []
    for k, inp in enumerate(inputs):
        p, s = network.unit_values(params.units, k), network.unit_values(stats.units, k)
        value, (h_out, raw, lg, s) = unit_objective(network, method, loss, k, p, s, inp, alphas[k], key)
        losses.append(value)
        logits.append(lg)
        outputs.append(method.hand_on(network, inp, h_out, raw))
        unit_stats.append(s)
    valid = jnp.stack([inp.valid for inp in inputs])
    losses, logits = jnp.stack(losses), jnp.stack(logits)
    new_slots = next_slots(network, slots, outputs)
    aux = (
        losses,
        logits,
        Parts(stem_stats, network.join_units(unit_stats)),
        new_slots,
        valid,
        jnp.stack([inp.labels for inp in inputs]),
    )
    return losses.sum(), aux
