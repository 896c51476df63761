"""Backprop: the cross-entropy of the last unit, end to end, one gradient through every unit.

* ``bp``: the identical network trained end to end (the SID authors' baseline).
* ``bp_remat``: the same with ``jax.checkpoint`` at every unit boundary (less
  memory, one extra forward pass).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import optax

from sidjax.losses import SIDLoss, label_distribution
from sidjax.methods._record import Method
from sidjax.network import Network, Variables


def bp_objective(network: Network, loss: SIDLoss, remat: bool = False) -> Callable:
    """BP's objective: the cross-entropy of the last unit, end to end (``unit_losses`` zeros)."""

    def objective(params, stats, x, labels, key):
        chain = network.forward(Variables(params, stats), x, labels, key, train=True, cut=False, remat=remat)
        target = label_distribution(labels, network.num_classes, loss.label_smoothing)
        value = optax.softmax_cross_entropy(chain.logits[-1], target).mean()
        return value, (jnp.zeros((network.num_units,)), chain.logits, chain.stats)

    return objective


def _bp(network, loss, execution):
    return bp_objective(network, loss)


def _bp_remat(network, loss, execution):
    return bp_objective(network, loss, remat=True)


BP = Method(name="bp", summary="end-to-end backprop of the last unit's cross-entropy", objective=_bp)
BP_REMAT = Method(
    name="bp_remat", summary="bp with jax.checkpoint at every unit boundary", objective=_bp_remat
)
