"""Feedback alignment (FA) and direct feedback alignment (DFA): errors carried by fixed random matrices.

**FA** (Lillicrap et al. 2016) is backprop in which the error reaches a
layer's *input* through a fixed random matrix ``B`` of the weight's shape
instead of the weight ``W`` itself: the weight gradient ``x^T delta`` is
backprop's, the input gradient is ``delta B^T``. ``feedback_alignment``
gives every layer of a network that has a ``kernel`` (``nnx.Linear``,
``nnx.Conv``, the built-in convolutions, your own layers of that form) its
``B`` and routes its backward pass through it, with no custom derivative: a
layer ``f(x, W) + b`` computes

    f(sg(x), W) + b  +  f(x, sg(B)) - sg(f(x, B))

whose value is ``f(x, W) + b``, whose gradient in ``W`` and ``b`` is
backprop's and whose gradient in ``x`` goes through ``B``. Works in both
modes, for the built-in architectures and for your own NNX model.

**DFA** (Noekland 2016) sends the output error ``e = dL/dlogits [B, N]``
straight to every unit but the last through the unit's own fixed matrix
``B_k [N, D_k]`` (``D_k`` the unit's output size): unit k's output gets the
gradient ``e B_k``, and no gradient crosses a unit boundary (the last unit is
trained by its cross-entropy). Here the feedback reaches each *unit* (a
block of layers and its head), so with one layer per block it is DFA as
published; inside a block the gradient is backprop's. Blockwise networks.

The feedback matrices are ``Feedback`` variables: drawn once from the seed's
key (normal, scaled as a LeCun initialisation of the weight's shape), saved
with the network's stats in every checkpoint, never trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sidjax.adapt import remodel
from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss, label_distribution
from sidjax.network import Network, Variables, sg


class Feedback(nnx.Variable):
    """A fixed random feedback matrix: kept with the stats, never trained."""


_FA_CLASSES: dict[type, type] = {}


def _fa_call(self, x, *args, **kwargs):
    """The layer's output, its input gradient through ``self.feedback`` (see the module's docstring)."""
    call = type(self).__mro__[1].__call__  # the layer's own
    out = call(self, sg(x), *args, **kwargs)
    mirror = nnx.clone(self)  # the same layer with kernel B and no bias, its variables of this trace
    mirror.kernel[...] = sg(self.feedback[...])
    if isinstance(getattr(mirror, "bias", None), nnx.Variable):
        mirror.bias[...] = jnp.zeros_like(mirror.bias[...])
    through_b = call(mirror, x, *args, **kwargs)
    return out + through_b - sg(through_b)


def fa_class(cls: type) -> type:
    """The feedback-alignment version of a layer class (one per class, so graph definitions compare equal)."""
    if cls not in _FA_CLASSES:
        _FA_CLASSES[cls] = type(f"FA{cls.__name__}", (cls,), {"__call__": _fa_call, "__module__": __name__})
    return _FA_CLASSES[cls]


def _has_kernel(node: Any) -> bool:
    return isinstance(node, nnx.Module) and isinstance(getattr(node, "kernel", None), nnx.Param)


def with_feedback(module: nnx.Module, key: chex.PRNGKey) -> int:
    """Gives every layer of ``module`` with a ``kernel`` parameter a fixed feedback matrix and routes its
    input gradient through it (in place). Layer i draws its matrix from ``fold_in(key, i)``. Returns the
    number of layers changed."""
    layers = [node for _, node in nnx.iter_graph(module) if _has_kernel(node)]
    for i, layer in enumerate(layers):
        if type(layer) in _FA_CLASSES.values():
            continue
        kernel = layer.kernel[...]
        fan_in = max(1, kernel.size // kernel.shape[-1])
        layer.feedback = Feedback(
            jax.random.normal(jax.random.fold_in(key, i), kernel.shape, kernel.dtype) / jnp.sqrt(fan_in)
        )
        layer.__class__ = fa_class(type(layer))
    return len(layers)


def feedback_alignment(
    network: Network, variables: Variables, key: chex.PRNGKey
) -> tuple[Network, Variables]:
    """``network`` whose every layer with a ``kernel`` learns by feedback alignment (``Method.prepare``)."""
    found = []

    def change(module, part_key, index):
        found.append(with_feedback(module, part_key))

    network, variables = remodel(network, variables, change, key)
    if not any(found):
        raise ConfigError(
            "method 'fa' found no layer with a 'kernel' parameter (nnx.Linear, nnx.Conv, ...) in the network",
            "method",
        )
    return network, variables


def direct_feedback(network: Network, variables: Variables, key: chex.PRNGKey) -> tuple[Network, Variables]:
    """Gives unit k its fixed matrix ``B_k [N, D_k]`` (a ``Feedback`` variable ``direct_feedback``; the last
    unit's is never read, so that equal units keep one structure)."""
    if not network.cut_features:
        raise ConfigError("method 'dfa' trains blockwise networks (mode 'blockwise')", "mode")
    sizes = _unit_output_sizes(network, variables)

    def change(module, part_key, index):
        if index < network.num_units:
            module.direct_feedback = Feedback(
                jax.random.normal(part_key, (network.num_classes, sizes[index]))
                / jnp.sqrt(network.num_classes)
            )

    return remodel(network, variables, change, key)


def _unit_output_sizes(network: Network, variables: Variables) -> list[int]:
    x = jax.ShapeDtypeStruct((1, *network.input_shape), jnp.float32)
    chain = jax.eval_shape(lambda v, x: network.forward(v, x, train=False, cut=True), variables, x)
    return [math.prod(h.shape[1:]) for h in chain.outputs]


def dfa_objective(network: Network, loss: SIDLoss, execution: str = "fused") -> Callable:
    """DFA's objective: the last unit's cross-entropy plus ``sum_k <h_k, sg(e B_k)>`` for the other units,
    whose gradient in unit k's parameters is DFA's; its value is reported as the cross-entropy."""

    def objective(params, stats, x, labels, key):
        chain = network.forward(Variables(params, stats), x, labels, key, train=True, cut=True)
        hs, logits = chain.outputs, chain.logits
        target = label_distribution(labels, network.num_classes, loss.label_smoothing)
        ce = optax.softmax_cross_entropy(logits[-1], target).mean()
        error = sg(jax.nn.softmax(logits[-1]) - target) / x.shape[0]
        surrogate = 0.0
        for k, h in enumerate(hs[:-1]):
            matrix = sg(network.unit_values(stats.units, k)["direct_feedback"][...])
            surrogate = surrogate + jnp.sum(h.reshape(h.shape[0], -1) * (error @ matrix))
        value = ce + surrogate - sg(surrogate)
        return value, (jnp.zeros((network.num_units,)), logits, chain.stats)

    return objective
