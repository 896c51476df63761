"""The objectives of SID and backprop: what ``sidjax.METHODS["sid"]``, ``"dgl"``, ``"bp"`` and ``"fa"`` minimise.

Every objective has one signature, ``objective(params, stats, x [B, ...],
labels [B], key) -> (value, (unit_losses [K], logits [K, B, N], stats))``
(``sidjax.methods.Method``); a step takes its gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.losses import SIDLoss, label_distribution
from sidjax.network import Network, Parts, UnitInput, Variables, sg
from sidjax.units import vmapped_losses


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


def bp_objective(network: Network, loss: SIDLoss, remat: bool = False) -> Callable:
    """BP's objective: the cross-entropy of the last unit, end to end (``unit_losses`` zeros)."""

    def objective(params, stats, x, labels, key):
        chain = network.forward(Variables(params, stats), x, labels, key, train=True, cut=False, remat=remat)
        target = label_distribution(labels, network.num_classes, loss.label_smoothing)
        value = optax.softmax_cross_entropy(chain.logits[-1], target).mean()
        return value, (jnp.zeros((network.num_units,)), chain.logits, chain.stats)

    return objective


def local_objective(network: Network, loss: SIDLoss, execution: str = "fused") -> Callable:
    """SID's (and DGL's) objective: the sum of the K local losses (``local_losses``)."""

    def objective(params, stats, x, labels, key):
        losses, logits, stats = local_losses(network, Variables(params, stats), x, labels, loss, key=key,
                                             execution=execution)  # fmt: skip
        return losses.sum(), (losses, logits, stats)

    return objective
