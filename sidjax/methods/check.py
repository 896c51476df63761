"""``check_method``: a method's documented properties, checked on one small batch before it trains.

The library's own property tests, available for your rule: its objective
gives a finite value and the documented shapes; a rule declared local sends
no gradient across a unit boundary (every Jacobian block between one unit's
loss and another unit's parameters is exactly zero); every unit with
parameters gets a gradient. ``sidjax.run`` calls it once for a method that
is not built in, before the first epoch.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss
from sidjax.methods import Method, check_adapted, get_method
from sidjax.network import Network, Variables


def check_method(
    method: str | Method,
    network: Network,
    variables: Variables,
    batch: tuple[chex.Array, chex.Array] | None = None,
    *,
    loss: SIDLoss = SIDLoss(),
    key: chex.PRNGKey | None = None,
) -> dict[str, Any]:
    """Checks ``method`` on ``network`` (as its ``adapt`` returned it) with one batch.

    Args:
      method: a ``Method``/``LocalMethod`` or a name.
      network, variables: the network the method trains, adapted.
      batch: ``(x [B, ...], labels [B])``; default 8 standard-normal inputs
        of the network's shape with labels ``0, 1, ..., N-1, 0, ...``.
      loss: the local-loss settings the rule is given.
      key: the step's key (default ``jax.random.key(0)``).

    Returns:
      What was measured: ``{"value", "unit_losses", "largest_cross_unit_gradient", "unit_gradients"}``.

    Raises:
      ConfigError: in one line, the first property that fails, naming the units.
    """
    spec = get_method(method)
    check_adapted(spec, network)
    x, labels = _batch(network) if batch is None else batch
    key = jax.random.key(0) if key is None else key
    objective = spec.make_objective(network, loss, "fused")
    k = network.num_units

    def unit_losses(params):
        return objective(params, variables.stats, x, labels, key)[1][0]

    value, (losses, logits, _) = objective(variables.params, variables.stats, x, labels, key)
    _check_contract(spec, value, losses, logits, k, x.shape[0], network.num_classes)
    grads = jax.grad(lambda p: objective(p, variables.stats, x, labels, key)[0])(variables.params)
    moved = [_largest(network.unit_values(grads.units, j)) for j in range(k)]
    has_params = [bool(jax.tree.leaves(network.unit_values(variables.params.units, j))) for j in range(k)]
    still = [j + 1 for j in range(k) if has_params[j] and not moved[j] > 0]
    if still:
        raise ConfigError(f"method {spec.name!r}: units {still} get no gradient from its objective; nothing would "
                          "train them", "method")  # fmt: skip
    crossing = 0.0
    if spec.local:
        jac = jax.jacrev(unit_losses)(variables.params)
        blocks = {
            (i, j): _largest(_block(network, jac.units, i, j)) for i in range(k) for j in range(k) if i != j
        }
        crossing = max(blocks.values(), default=0.0)
        leaks = [f"unit {i + 1}'s loss reaches unit {j + 1}" for (i, j), size in blocks.items() if size > 0]
        if leaks:
            raise ConfigError(
                f"method {spec.name!r} is declared local but gradients cross unit boundaries: {', '.join(leaks[:3])}"
                f"{' and more' if len(leaks) > 3 else ''} (stop what a unit hands on: jax.lax.stop_gradient)",
                "method",
            )
    return {"value": float(value), "unit_losses": np.asarray(losses).tolist(),
            "largest_cross_unit_gradient": crossing, "unit_gradients": moved}  # fmt: skip


def _batch(network: Network) -> tuple[chex.Array, chex.Array]:
    x = jax.random.normal(jax.random.key(1), (8, *network.input_shape))
    return x, jnp.arange(8) % network.num_classes


def _check_contract(spec: Method, value, losses, logits, k: int, batch: int, n: int) -> None:
    shapes = {"value": (jnp.shape(value), ()), "unit_losses": (jnp.shape(losses), (k,)),
              "logits": (jnp.shape(logits), (k, batch, n))}  # fmt: skip
    wrong = [
        f"{name} is {got}, expected {want}" for name, (got, want) in shapes.items() if tuple(got) != want
    ]
    if wrong:
        raise ConfigError(f"method {spec.name!r}: its objective's {'; '.join(wrong)}", "method")
    if not (np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(losses)))):
        raise ConfigError(f"method {spec.name!r}: its loss is not finite ({float(value)}) on a fresh network",
                          "method")  # fmt: skip


def _block(network: Network, jac_units: Any, i: int, j: int) -> Any:
    """d loss_i / d (unit j's params)."""
    if network.stacked:
        return jax.tree.map(lambda a: a[i, j], jac_units)
    return jax.tree.map(lambda a: a[i], jac_units[j])


def _largest(tree: Any) -> float:
    leaves = jax.tree.leaves(tree)
    return max((float(jnp.max(jnp.abs(a))) for a in leaves if a.size), default=0.0)
