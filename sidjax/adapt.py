"""Changing a built network's modules for a method: new layers' behaviour, new fixed arrays."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.network import Network, PartDef, Parts, Variables


def remodel(
    network: Network,
    variables: Variables,
    change: Callable[[nnx.Module, chex.PRNGKey, int], None],
    key: chex.PRNGKey,
) -> tuple[Network, Variables]:
    """The network and variables after ``change(module, key, index)`` edited every part's module in place.

    Each part (the stem, then unit k) is merged with its arrays, changed with
    its own key and index (the stem ``fold_in(key, K)`` and K, unit k
    ``fold_in(key, k)`` and k) and split again: new variables (a method's fixed feedback) join its stats.
    Stacked units that a change made different (DFA's last unit) are stacked no more.
    """

    def one(part: PartDef, params, stats, index):
        module = part.merge(params, stats, jax.random.key(0) if part.rngs else None, True)
        change(module, jax.random.fold_in(key, index), index)
        return PartDef.split(module)

    stem, stem_params, stem_stats = network.stem, variables.params.stem, variables.stats.stem
    if stem is not None:
        stem, stem_params, stem_stats = one(stem, stem_params, stem_stats, network.num_units)
    parts = [
        one(network.units[0 if network.stacked else k], network.unit_values(variables.params.units, k),
            network.unit_values(variables.stats.units, k), k)
        for k in range(network.num_units)
    ]  # fmt: skip
    stacked = network.stacked and all(_same_structure(part, parts[0]) for part in parts)
    defs = parts[:1] if stacked else parts
    new = dataclasses.replace(network, stem=stem, units=tuple(d for d, _, _ in defs), stacked=stacked)
    units = Parts(new.join_units([p for _, p, _ in parts]), new.join_units([s for _, _, s in parts]))
    return new, Variables(Parts(stem_params, units[0]), Parts(stem_stats, units[1]))


def _same_structure(part: tuple, other: tuple) -> bool:
    """Two ``(PartDef, params, stats)`` of one structure (they can be stacked)."""
    return part[0] == other[0] and all(
        jax.tree.structure(a) == jax.tree.structure(b)
        and jax.tree.map(jnp.shape, a) == jax.tree.map(jnp.shape, b)
        for a, b in zip(part[1:], other[1:], strict=True)
    )
