"""A fresh linear read-out trained on a frozen network: the HSIC bottleneck's post-training, a linear probe.

``fresh_readout`` (the ``readout`` method's ``prepare``) changes a network
in two ways before training:

* the last unit's ``head`` becomes a ``ReadOut``: global average pooling of
  the unit's output ``h`` (stopped), then one ``nnx.Linear(C -> N)`` drawn
  from the seed's key. On a blockwise network ``h`` is the last block's
  output; on a shared trunk it is the extractor's features ``z``.
* every other parameter becomes ``Frozen``: a variable the optimizer never
  sees (it moves from the params to the stats), so neither a gradient, nor
  momentum, nor weight decay can change it.

``readout_objective`` is the read-out's cross-entropy with the network in
evaluation mode (running BatchNorm statistics, no dropout), whose stats it
leaves as they are. Start from a trained run with ``init_from`` (the
run's directory): the HSIC bottleneck's authors post-train such a layer for
5 epochs of SGD (learning rate 0.005, weight decay 0.001, batch 256, no
momentum) on their HSIC-trained network.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sidjax.adapt import remodel
from sidjax.errors import ConfigError
from sidjax.heads import pool_features
from sidjax.losses import SIDLoss, label_distribution
from sidjax.methods._record import Method
from sidjax.network import Network, Variables


class Frozen(nnx.Variable):
    """A parameter a method holds fixed: kept with the stats, never given to the optimizer."""


class ReadOut(nnx.Module):
    """``(h, log_belief) -> logits [B, N]``: one linear layer on the pooled, stopped ``h [B, ..., C]``."""

    def __init__(self, features: int, num_classes: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(features, num_classes, rngs=rngs)

    def __call__(self, h: jax.Array, log_belief: jax.Array) -> jax.Array:
        del log_belief  # a read-out of the features alone
        return self.linear(pool_features(jax.lax.stop_gradient(h)))


def freeze(module: nnx.Module) -> None:
    """Every ``nnx.Param`` of ``module`` (and of its submodules) becomes ``Frozen``, in place."""
    for _, sub in module.iter_modules():
        for name, value in list(vars(sub).items()):
            if isinstance(value, nnx.Param):
                setattr(sub, name, Frozen(value[...]))


def fresh_readout(network: Network, variables: Variables, key: chex.PRNGKey) -> tuple[Network, Variables]:
    """The ``readout`` method's change: the last unit's head a fresh ``ReadOut`` from ``key``, all else ``Frozen``."""
    x = jax.ShapeDtypeStruct((1, *network.input_shape), jnp.float32)
    outputs = jax.eval_shape(lambda v, x: network.forward(v, x, train=False, cut=True).outputs, variables, x)
    features = outputs[-1].shape[-1]
    last = network.num_units - 1
    missing = []

    def change(module, part_key, index):
        freeze(module)
        if index == last:
            if not hasattr(module, "head"):
                missing.append(type(module).__name__)
                return
            module.head = ReadOut(features, network.num_classes, rngs=nnx.Rngs(part_key))

    network, variables = remodel(network, variables, change, key)
    if missing:
        raise ConfigError(
            f"method 'readout' replaces the last unit's head attribute; your unit {missing[0]} has none "
            "(build it with sidjax.blockwise or sidjax.trunk, or give your unit a head)",
            "method",
        )
    return network, variables


def readout_objective(network: Network, loss: SIDLoss, execution: str = "fused") -> Callable:
    """``objective(params, stats, x, labels, key)``: the last unit's cross-entropy, the network in evaluation
    mode (``unit_losses [K]``: zeros but the last; the stats come back unchanged)."""

    def objective(params, stats, x, labels, key):
        chain = network.forward(Variables(params, stats), x, labels, key, train=False, cut=True)
        target = label_distribution(labels, network.num_classes, loss.label_smoothing)
        value = optax.softmax_cross_entropy(chain.logits[-1], target).mean()
        return value, (jnp.zeros((network.num_units,)).at[-1].set(value), chain.logits, stats)

    return objective


READOUT = Method(
    name="readout",
    summary="a fresh linear read-out on the last unit of a trained network (start from its run), every other "
    "parameter frozen",
    objective=readout_objective, gradients="local", prepare=fresh_readout,
)  # fmt: skip
