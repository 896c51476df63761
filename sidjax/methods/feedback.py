"""Feedback alignment (FA) and direct feedback alignment (DFA): errors carried by fixed random matrices.

**FA** (Lillicrap et al. 2016) is backprop in which the error reaches a
layer's *input* through a fixed random matrix ``B`` of the weight's shape
instead of the weight ``W`` itself: the weight gradient ``x^T delta`` is
backprop's, the input gradient is ``delta B^T``. ``feedback_alignment``
gives every layer of a network that has a ``kernel`` (``nnx.Linear``,
``nnx.Conv``, the built-in convolutions, your own layers of that form) its
``B`` and routes its backward pass through it: a layer ``f(x, W) + b``
computes its own output, and in the backward pass its gradient in ``W`` and
``b`` is backprop's while its gradient in ``x`` is the vector-Jacobian
product of ``f(x, B)`` (a custom VJP around the layer's own call, so each
layer is applied once forward, as in backprop). Works in both
modes, for the built-in architectures and for your own NNX model.

**DFA** (Noekland 2016) sends the output error ``e = dL/dlogits [B, N]``
(of the network's last logits) straight to every layer with a ``kernel``
through the layer's own fixed matrix ``B_l [N, *S_l]`` (``S_l`` the layer's
whole input per example: ``[C]`` for a dense layer, ``[H, W, C]`` for a
convolution, ``[T, D]`` for a transformer's tokens): the layer reads its
input stopped, and the input gets the gradient ``e B_l`` instead, which
reaches the layer before through the parameter-free operations between them
(its activation derivative, pooling, normalisation, skip connections). Every
hidden value has its own random projection of the error, as in DFA as
published (biotorch's convolutions share one projection over all positions
instead). The last layer learns from the cross-entropy itself. Both modes,
the built-in architectures and your own NNX model; on a blockwise network the heads of
units 1..K-1 are read-outs trained on their block's stopped output (off the
path to the prediction, they would otherwise send the error twice).

The feedback matrices are ``Feedback`` variables: drawn once from the seed's
key (normal, scaled as a LeCun initialisation of the weight's shape), saved
with the network's stats in every checkpoint, never trained.
"""

from __future__ import annotations

import functools
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
from sidjax.methods._record import Method
from sidjax.methods.backprop import bp_objective
from sidjax.network import Network, Variables, sg


class Feedback(nnx.Variable):
    """A fixed random feedback matrix: kept with the stats, never trained."""


_FA_CLASSES: dict[type, type] = {}


def _fa_call(self, x, *args, **kwargs):
    """The layer's output, its input gradient through ``self.feedback`` (see the module's docstring)."""
    call = type(self).__mro__[1].__call__  # the layer's own
    graphdef, state = nnx.split(self)

    def apply(state, x):
        return call(nnx.merge(graphdef, jax.tree.map(lambda a: a, state)), x, *args, **kwargs)

    def through_b(state, x):  # the same layer with kernel B and no bias
        mirror = nnx.merge(graphdef, jax.tree.map(lambda a: a, state))
        mirror.kernel[...] = sg(mirror.feedback[...])
        if isinstance(getattr(mirror, "bias", None), nnx.Variable):
            mirror.bias[...] = jnp.zeros_like(mirror.bias[...])
        return call(mirror, x, *args, **kwargs)

    return _feedback_route(apply, through_b, state, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _feedback_route(apply: Callable, through_b: Callable, state: Any, x: chex.Array) -> chex.Array:
    """``apply(state, x)``, whose gradient in ``state`` is its own and in ``x`` that of ``through_b``.

    One application forward; backward, the weight gradient and the input gradient through ``B`` (the
    value ``through_b`` computes there is unused, so it is compiled away): backprop's cost.
    """
    return apply(state, x)


def _route_forward(apply, through_b, state, x):
    out, pull_state = jax.vjp(lambda s: apply(s, x), state)
    return out, (pull_state, state, x)


def _route_backward(apply, through_b, residuals, g):
    pull_state, state, x = residuals
    _, pull_x = jax.vjp(lambda x: through_b(state, x), x)
    return pull_state(g)[0], pull_x(g)[0]


_feedback_route.defvjp(_route_forward, _route_backward)


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
    return _every_layer(
        "fa", network, variables, lambda module, part_key, index: with_feedback(module, part_key), key
    )


def _every_layer(method: str, network: Network, variables: Variables, change: Callable, key: chex.PRNGKey):
    """``remodel`` with ``change(module, key, index) -> layers changed``; refuses a network with none."""
    found = []
    network, variables = remodel(network, variables, lambda *a: found.append(change(*a)), key)
    if not any(found):
        raise ConfigError(
            f"method {method!r} found no layer with a 'kernel' parameter (nnx.Linear, nnx.Conv, ...) in the "
            "network",
            "method",
        )
    return network, variables


class LayerInput(nnx.Variable):
    """What a DFA layer read in the training pass (left in the stats by the pass, taken out by the objective)."""


_DFA_CLASSES: dict[type, type] = {}


def _dfa_call(self, x, *args, **kwargs):
    """The layer on its input stopped; the input itself is kept for ``e B_l`` (``dfa_objective``)."""
    seen = self.layer_input.get_value() if isinstance(getattr(self, "layer_input", None), LayerInput) else ()
    self.layer_input = LayerInput((*seen, x))
    return type(self).__mro__[1].__call__(self, sg(x), *args, **kwargs)


def dfa_class(cls: type) -> type:
    """The direct-feedback-alignment version of a layer class (one per class)."""
    if cls not in _DFA_CLASSES:
        _DFA_CLASSES[cls] = type(
            f"DFA{cls.__name__}", (cls,), {"__call__": _dfa_call, "__module__": __name__}
        )
    return _DFA_CLASSES[cls]


def with_direct_feedback(
    module: nnx.Module, num_classes: int, key: chex.PRNGKey, shapes: dict | None = None, prefix: tuple = ()
) -> int:
    """Gives every layer of ``module`` with a ``kernel`` a fixed matrix ``B_l [N, *S_l]`` (``fold_in(key, i)``)
    and makes it read its input stopped (in place). ``S_l`` is the layer's whole input per example where
    ``shapes`` gives it (keyed by ``prefix`` + the layer's path), else the features one application reads
    (``_input_features``). Returns the number of layers with a kernel."""
    layers = [(path, node) for path, node in nnx.iter_graph(module) if _has_kernel(node)]
    for i, (path, layer) in enumerate(layers):
        if shapes is None and type(layer) in _DFA_CLASSES.values():
            continue
        shape = (shapes or {}).get(prefix + tuple(path), _input_features(layer))
        layer.direct_feedback = Feedback(
            jax.random.normal(jax.random.fold_in(key, i), (num_classes, *shape)) / jnp.sqrt(num_classes)
        )
        if type(layer) not in _DFA_CLASSES.values():
            layer.__class__ = dfa_class(type(layer))
    return len(layers)


def _input_features(layer: nnx.Module) -> tuple[int, ...]:
    """The trailing input dimensions one application of the layer reads: ``in_features`` (a
    ``LinearGeneral``'s may be several), else the kernel's input channels."""
    features = getattr(layer, "in_features", None)
    if features is None:
        return (layer.kernel[...].shape[-2],)
    return tuple(features) if isinstance(features, tuple | list) else (int(features),)


def direct_feedback(network: Network, variables: Variables, key: chex.PRNGKey) -> tuple[Network, Variables]:
    """``network`` whose every layer with a ``kernel`` learns by direct feedback alignment
    (``Method.prepare``); on a blockwise network units 1..K-1 get read-out heads (``BlockUnit.probe``).

    Two passes: the layers first get ``B_l [N, C_l]``; a shape-only training pass then shows each layer's
    whole input, and ``B_l`` is drawn again over all of it (``[N, H, W, C]`` for a convolution)."""

    def change(module, part_key, index, shapes=None):
        last = index >= network.num_units - 1  # the last unit, or the stem
        if not network.cut_features or last:
            return with_direct_feedback(module, network.num_classes, part_key, shapes)
        if not hasattr(module, "probe"):
            raise ConfigError(
                f"method 'dfa' needs blockwise units built by sidjax.blockwise (BlockUnit), got "
                f"{type(module).__name__}",
                "model",
            )
        module.probe = True
        return with_direct_feedback(module.layers, network.num_classes, part_key, shapes, ("layers",))

    network, variables = _every_layer("dfa", network, variables, change, key)
    shapes = _input_shapes(network, variables)
    return remodel(network, variables, lambda m, k, i: change(m, k, i, shapes[i]), key)


def _input_shapes(network: Network, variables: Variables) -> dict[int, dict[tuple, tuple[int, ...]]]:
    """Part index (unit k: k, the stem: K) -> {layer path: its input's shape per example}, from a shape-only
    training pass; a layer read at several shapes is left out (it keeps ``B_l [N, C_l]``)."""

    def parts(v, x):
        stats = network.forward(v, x, None, jax.random.key(0), train=True, cut=False).stats
        return {network.num_units: stats.stem, **{k: network.unit_values(stats.units, k)
                                                  for k in range(network.num_units)}}  # fmt: skip

    x = jax.ShapeDtypeStruct((2, *network.input_shape), jnp.float32)
    found: dict[int, dict[tuple, tuple[int, ...]]] = {}
    for index, part in jax.eval_shape(parts, variables, x).items():
        found[index] = {}
        for path, seen in nnx.filter_state(part, LayerInput).flat_state():
            shapes = {tuple(a.shape[1:]) for a in seen.get_value()}
            if len(shapes) == 1:
                found[index][tuple(path[:-1])] = shapes.pop()
    return found


def _injected(stats: Any, error: chex.Array, stacked: bool = False) -> tuple[chex.Array, Any]:
    """``(sum_l <x_l, e B_l>, stats without the inputs)`` over the layer inputs a training pass left in
    ``stats`` (an ``nnx.State``; ``stacked`` units' leaves carry a leading ``[K]`` axis)."""
    total = 0.0
    for path, seen in nnx.filter_state(stats, LayerInput).flat_state():
        layer = stats
        for name in path[:-1]:
            layer = layer[name]
        matrix = sg(layer["direct_feedback"][...])
        for x in seen.get_value():
            total = total + jnp.sum(x * _signal(error, matrix, x.ndim, stacked))
    return total, nnx.filter_state(stats, nnx.Not(LayerInput))


def _signal(error: chex.Array, matrix: chex.Array, ndim: int, stacked: bool) -> chex.Array:
    """``e B_l`` shaped to multiply a layer input of ``ndim`` dimensions (the same at every position)."""
    if stacked:  # matrix [K, N, *F], inputs [K, B, ..., *F]
        k, n, features = matrix.shape[0], matrix.shape[1], matrix.shape[2:]
        signal = jnp.einsum("bn,knf->kbf", error, matrix.reshape(k, n, -1))
        return signal.reshape((k, error.shape[0]) + (1,) * (ndim - 2 - len(features)) + features)
    features = matrix.shape[1:]
    signal = error @ matrix.reshape(matrix.shape[0], -1)
    return signal.reshape((error.shape[0],) + (1,) * (ndim - 1 - len(features)) + features)


def dfa_objective(network: Network, loss: SIDLoss, execution: str = "fused") -> Callable:
    """DFA's objective: the cross-entropy of the last logits, plus ``sum_l <x_l, sg(e B_l)>`` over the layer
    inputs (zero in value; its gradient in the layers before is DFA's), plus on a blockwise network the
    read-out heads' cross-entropies (``unit_losses [K]``: each head's; the last is the network's)."""

    def objective(params, stats, x, labels, key):
        chain = network.forward(Variables(params, stats), x, labels, key, train=True, cut=False)
        target = label_distribution(labels, network.num_classes, loss.label_smoothing)
        ces = optax.softmax_cross_entropy(chain.logits, target[None]).mean(axis=1)
        error = sg(jax.nn.softmax(chain.logits[-1]) - target) / x.shape[0]
        injected, units = _injected_parts(chain.stats.units, error, network.stacked)
        stem_injected, stem = _injected(chain.stats.stem, error)
        total = injected + stem_injected
        read_outs = ces[:-1].sum() if network.cut_features else 0.0
        value = ces[-1] + read_outs + total - sg(total)
        losses = ces if network.cut_features else jnp.zeros((network.num_units,)).at[-1].set(ces[-1])
        return value, (losses, chain.logits, chain.stats._replace(stem=stem, units=units))

    return objective


def _injected_parts(units: Any, error: chex.Array, stacked: bool) -> tuple[chex.Array, Any]:
    if stacked:
        return _injected(units, error, stacked=True)
    pieces = [_injected(u, error) for u in units]
    return sum(p for p, _ in pieces), type(units)(u for _, u in pieces)


FA = Method(
    name="fa",
    summary="feedback alignment: backprop of the last unit's cross-entropy, errors through fixed random matrices",
    objective=lambda network, loss, execution: bp_objective(network, loss), prepare=feedback_alignment,
    default_lr=1e-4,  # at Adam 1e-3 it diverged (mlp4, epoch 2 of full Fashion-MNIST; epoch 3 of 10 000 examples)
)  # fmt: skip
DFA = Method(
    name="dfa",
    summary="direct feedback alignment: the output error reaches every layer through its own fixed random matrix",
    objective=dfa_objective, belief_input={"trunk": "prob", "blockwise": "none"}, prepare=direct_feedback,
    default_lr=1e-4,  # as FA's: at Adam 1e-3 it diverged on mlp4
)  # fmt: skip
