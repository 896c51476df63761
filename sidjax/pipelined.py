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

from sidjax.losses import SIDLoss, uniform_log_belief
from sidjax.network import NetParams, Network
from sidjax.units import UnitInput, first_input, vmapped_losses

sg = jax.lax.stop_gradient


def init_slots(network: Network, params: NetParams, x_shape: tuple[int, ...]) -> Any:
    """K empty slots for batches of shape ``x_shape = (B, H, W, C)``."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    feats = jax.eval_shape(lambda p, x: network.chain(p, x, cut=True).inputs, params, x)
    batch = x_shape[0]

    def empty(f):
        return UnitInput(
            jnp.zeros(f.shape, f.dtype),
            uniform_log_belief(batch, network.num_classes),
            jnp.zeros((batch,), jnp.int32),
            jnp.asarray(False),
        )

    if network.stacked:  # one stacked slot [K, ...]
        k = network.num_units
        one = empty(jax.ShapeDtypeStruct(feats.shape[1:], feats.dtype))
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (k, *a.shape)), one)
    return tuple(empty(f) for f in feats)


def unit_inputs(network: Network, slots: Any, fresh: UnitInput) -> list[UnitInput]:
    """Every unit's input this step: ``fresh`` for unit 1, its slot for the others."""
    if slots == () or slots is None:
        raise ValueError(
            "the pipelined step needs state.slots: build the state with "
            "init_train_state(params, tx, slots=init_slots(network, params, x.shape))"
        )
    return [fresh, *network.unit_list(slots)[1:]]


def next_slots(network: Network, slots: Any, outputs: list[UnitInput]) -> Any:
    """Unit k's output becomes unit k+1's slot (slot 0 keeps its placeholder)."""
    return network.join_units([network.unit_params(slots, 0), *outputs[:-1]])


def pipelined_losses(
    network: Network,
    params: NetParams,
    x: chex.Array,
    labels: chex.Array,
    slots: Any,
    loss: SIDLoss,
    vmap: bool,
) -> tuple[chex.Array, tuple[chex.Array, chex.Array, Any, chex.Array, chex.Array]]:
    """Every unit's loss on its own input: the batch for unit 1, its slot for the others.

    Returns:
      ``(objective, (losses [K], logits [K, B, N], new_slots, valid [K],
      last_labels [B]))``.
    """
    alphas = loss.alphas(network.num_units)
    fresh = first_input(network, x, labels)._replace(h=network.stem(params.stem, x), valid=jnp.asarray(True))
    if vmap:  # stacked: set slot 0 to the fresh input, one vmap, one roll
        inputs = jax.tree.map(lambda s, f: s.at[0].set(f), slots, fresh)
        losses, logits, h_out = vmapped_losses(network, loss, params.units, inputs, alphas, 0, 0)
        outputs = UnitInput(sg(h_out), jax.nn.log_softmax(sg(logits)), inputs.labels, inputs.valid)
        new_slots = jax.tree.map(lambda a: jnp.roll(a, 1, axis=0), outputs)
        return losses.sum(), (losses, logits, new_slots, inputs.valid, inputs.labels[-1])
    inputs = unit_inputs(network, slots, fresh)
    losses, logits, outputs = [], [], []
    for k, (unit_params, inp) in enumerate(zip(network.unit_list(params.units), inputs, strict=True)):
        h_out, lg = network.unit(k, unit_params, inp.h, inp.log_belief)
        losses.append(
            jnp.where(inp.valid, loss.per_example(lg, inp.log_belief, inp.labels, alphas[k]).mean(), 0.0)
        )
        logits.append(lg)
        outputs.append(UnitInput(sg(h_out), jax.nn.log_softmax(sg(lg)), inp.labels, inp.valid))
    valid = jnp.stack([inp.valid for inp in inputs])
    losses, logits = jnp.stack(losses), jnp.stack(logits)
    return losses.sum(), (losses, logits, next_slots(network, slots, outputs), valid, inputs[-1].labels)
