"""SID networks as pure functions over a params pytree: shared-trunk and blockwise.

Both kinds are one object, a ``Network``: a *stem* followed by K *units*,
each ``unit(h, belief) -> (h_out, logits)`` (``sidjax.models``).

* shared trunk (``docs/method.md``, "Shared trunk"): stem = feature extractor, units = identical
  belief modules that pass ``z`` through; the stem gets every unit's gradient.
* blockwise (``docs/method.md``, "Blockwise"): stem = nothing (or ViT's patch embedding),
  units = backbone block + belief head; each unit's feature output is cut
  (``cut_features``), so no gradient crosses any block boundary and the stem
  trains with block 1 only.

Units with equal structure are **stacked** along a leading axis (one vmapped
init, applied with ``lax.scan``/``vmap``); otherwise they are a tuple.
``stack_units``/``unstack_units`` convert between a list of per-unit pytrees
and the stacked form; ``Network.unit_list``/``Network.join_units`` between a
list and whichever form the network uses.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.architectures import ARCHITECTURES, Extractor
from sidjax.losses import uniform_log_belief
from sidjax.models import BeliefHead, BeliefModule, BlockUnit
from sidjax.ops import ConvImpl

sg = jax.lax.stop_gradient


class NetParams(NamedTuple):
    """Params of a network.

    Attributes:
      stem: the stem's ``nnx.State`` (``{}`` when there is no stem).
      units: stacked ``nnx.State`` with leaves ``[K, ...]`` when the network
        is ``stacked``, else a tuple of K states.
    """

    stem: Any
    units: Any


class Chain(NamedTuple):
    """What one pass through the units produced.

    Attributes:
      logits: ``[K, B, N]``, unit k's logits.
      prev_log_beliefs: ``[K, B, N]``, unit k's belief input ``log p_{k-1}``.
      inputs: unit k's feature input; stacked ``[K, ...]`` for stacked
        networks, else a list of K arrays.
    """

    logits: chex.Array
    prev_log_beliefs: chex.Array
    inputs: Any


@dataclasses.dataclass(frozen=True)
class Network:
    """Static description of a network (hashable; params live apart).

    Attributes:
      stem_def: graphdef of the stem, or None (identity).
      unit_defs: one graphdef per unit (a single one when ``stacked``).
      stacked: units share one structure and are stacked along axis 0.
      num_units: K.
      num_classes: N.
      cut_features: blockwise (True) or shared trunk (False).
      belief_input: whether units read the previous belief (False for DGL).
      name: a label for logs.
    """

    stem_def: nnx.GraphDef | None
    unit_defs: tuple[nnx.GraphDef, ...]
    stacked: bool
    num_units: int
    num_classes: int
    cut_features: bool
    belief_input: bool = True
    name: str = ""

    def stem(self, stem_params: Any, x: chex.Array) -> chex.Array:
        """``x [B, H, W, C] -> h_0``."""
        return x if self.stem_def is None else nnx.merge(self.stem_def, stem_params)(x)

    def unit(
        self, k: int, unit_params: Any, h: chex.Array, log_belief: chex.Array
    ) -> tuple[chex.Array, chex.Array]:
        """Unit k: ``(h, log p_{k-1} [B, N]) -> (h_out, logits [B, N])``."""
        unit_def = self.unit_defs[0 if self.stacked else k]
        return nnx.merge(unit_def, unit_params)(h, jnp.exp(log_belief))

    def unit_params(self, units: Any, k: int) -> Any:
        """Unit k's params (or any per-unit pytree), from stacked or tuple units."""
        return jax.tree.map(lambda a: a[k], units) if self.stacked else units[k]

    def unit_list(self, units: Any) -> list[Any]:
        """Stacked or tuple per-unit pytrees -> a list of K pytrees."""
        return unstack_units(units, self.num_units) if self.stacked else list(units)

    def join_units(self, trees: list[Any]) -> Any:
        """A list of K per-unit pytrees -> the network's form (stacked or a tuple)."""
        return stack_units(trees) if self.stacked else tuple(trees)

    def run_units(self, units: Any, h0: chex.Array, *, cut: bool, remat: bool = False) -> Chain:
        """Runs the chain from ``h_0`` and the uniform prior.

        Args:
          units: the units' params.
          h0: the stem's output.
          cut: SID's stop-gradients: on every belief input, and on every
            unit's feature output when ``cut_features``. ``cut=False`` is
            the end-to-end network that backprop trains.
          remat: rematerialise each unit in the backward pass
            (``jax.checkpoint`` at every block boundary).

        Returns:
          A ``Chain``.
        """

        def step(k, params_k, h, log_belief):
            if cut:
                log_belief = sg(log_belief)
            apply = jax.checkpoint(self.unit, static_argnums=0) if remat else self.unit
            h_out, logits = apply(k, params_k, h, log_belief)
            if cut and self.cut_features:
                h_out = sg(h_out)
            return h_out, jax.nn.log_softmax(logits), (logits, log_belief, h)

        prior = uniform_log_belief(h0.shape[0], self.num_classes)
        if self.stacked:

            def body(carry, params_k):
                h_out, log_belief, out = step(0, params_k, *carry)
                return (h_out, log_belief), out

            _, (logits, prev, inputs) = jax.lax.scan(body, (h0, prior), units)
        else:
            h, log_belief, outs = h0, prior, []
            for k in range(self.num_units):
                h, log_belief, out = step(k, units[k], h, log_belief)
                outs.append(out)
            logits = jnp.stack([o[0] for o in outs])
            prev = jnp.stack([o[1] for o in outs])
            inputs = [o[2] for o in outs]
        chex.assert_shape(logits, (self.num_units, h0.shape[0], self.num_classes))
        return Chain(logits, prev, inputs)

    def chain(self, params: NetParams, x: chex.Array, *, cut: bool, remat: bool = False) -> Chain:
        """``run_units`` after the stem."""
        return self.run_units(params.units, self.stem(params.stem, x), cut=cut, remat=remat)

    def apply(self, params: NetParams, x: chex.Array) -> chex.Array:
        """Inference: every unit's logits ``[K, B, N]``; the prediction is row -1."""
        return self.chain(params, x, cut=False).logits


def _split_params(module: nnx.Module | None) -> tuple[nnx.GraphDef | None, Any]:
    if module is None:
        return None, {}
    graphdef, params = nnx.split(module)
    return graphdef, params


def make_network(
    model: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    num_modules: int,
    key: chex.PRNGKey,
    *,
    feature_dim: int = 128,
    module_hidden: int = 256,
    conv_impl: ConvImpl = "xla",
    tiny: bool = False,
) -> tuple[Network, NetParams]:
    """Shared-trunk SID: extractor + L stacked belief modules.

    Args:
      model: backbone name, a key of ``sidjax.architectures.ARCHITECTURES``.
      input_shape: one example's shape ``(H, W, C)``.
      num_classes: N.
      num_modules: L >= 1 belief modules.
      key: PRNG key; the extractor and the (vmapped) modules get their own.
      feature_dim: d, the extractor's output width.
      module_hidden: hidden width of each belief module.
      conv_impl: convolution backward implementation (``sidjax.ops``).
      tiny: the backbone's tiny variant (tests).

    Returns:
      ``(network, params)``.
    """
    _check_model(model)
    if num_modules < 1:
        raise ValueError(f"num_modules must be >= 1, got {num_modules}")
    extractor_key, modules_key = jax.random.split(key)
    rngs = nnx.Rngs(params=extractor_key)
    backbone = ARCHITECTURES[model](tuple(input_shape), tiny, conv_impl, rngs)
    stem_def, stem_params = _split_params(Extractor(backbone, feature_dim, rngs=rngs))

    def new_module(k):
        return BeliefModule(feature_dim, num_classes, module_hidden, rngs=nnx.Rngs(params=k))

    module_def = nnx.split(nnx.eval_shape(lambda: new_module(jax.random.key(0))))[0]
    module_params = jax.vmap(lambda k: nnx.split(new_module(k))[1])(
        jax.random.split(modules_key, num_modules)
    )
    network = Network(
        stem_def, (module_def,), True, num_modules, num_classes, cut_features=False, name=f"{model}/trunk"
    )
    return network, NetParams(stem_params, module_params)


def make_blockwise_network(
    model: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    num_blocks: int,
    key: chex.PRNGKey,
    *,
    head_hidden: int = 256,
    belief_input: bool = True,
    conv_impl: ConvImpl = "xla",
    tiny: bool = False,
) -> tuple[Network, NetParams]:
    """Blockwise SID: K backbone blocks, each with a belief head.

    Args:
      model: backbone name (``sidjax.architectures.ARCHITECTURES``).
      input_shape: ``(H, W, C)``.
      num_classes: N.
      num_blocks: K; the backbone's cut rule says which K are allowed.
      key: PRNG key.
      head_hidden: hidden width of each head.
      belief_input: heads read ``sg(p_{k-1})`` (SID) or not (DGL).
      conv_impl: convolution backward implementation.
      tiny: the backbone's tiny variant (tests).

    Returns:
      ``(network, params)``; units are stacked when all K blocks have the
      same structure (e.g. ViT with K dividing its depth).

    Raises:
      ValueError: unknown model, or a cut the architecture does not allow.
    """
    _check_model(model)
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    rngs = nnx.Rngs(params=key)
    backbone = ARCHITECTURES[model](tuple(input_shape), tiny, conv_impl, rngs)
    groups = backbone.cut(num_blocks)
    units = [
        BlockUnit(
            [backbone.layers[i] for i in group],
            BeliefHead(backbone.widths[group[-1]], num_classes, head_hidden, belief_input, rngs=rngs),
        )
        for group in groups
    ]
    stem_def, stem_params = _split_params(backbone.stem)
    defs, states = zip(*(nnx.split(u) for u in units), strict=True)
    # Blocks stack (for scan/vmap) only if they have one structure -- graphdefs ignore
    # array shapes, so param shapes must match too -- and keep the feature shape.
    signature = [jax.tree.map(lambda a: (a.shape, a.dtype), st) for st in states]
    stacked = (
        all(d == defs[0] for d in defs)
        and all(sig == signature[0] for sig in signature)
        and _preserves_feature_shape(units, backbone.stem, input_shape, num_classes)
    )
    if stacked:
        unit_params = stack_units(list(states))
        defs = defs[:1]
    else:
        unit_params = tuple(states)
    network = Network(
        stem_def, tuple(defs), stacked, num_blocks, num_classes, True, belief_input, name=f"{model}/blockwise"
    )
    return network, NetParams(stem_params, unit_params)


def _preserves_feature_shape(units, stem, input_shape, num_classes) -> bool:
    h = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    if stem is not None:
        h = jax.eval_shape(stem, h)
    belief = jax.ShapeDtypeStruct((1, num_classes), jnp.float32)
    for unit in units:
        out = jax.eval_shape(lambda h, b, unit=unit: unit(h, b)[0], h, belief)
        if out.shape != h.shape:
            return False
        h = out
    return True


def _check_model(model: str) -> None:
    if model not in ARCHITECTURES:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(ARCHITECTURES)}")


def stack_units(trees: list[Any]) -> Any:
    """A list of K pytrees of equal structure -> one pytree with leaves ``[K, ...]``."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack_units(stacked: Any, num: int | None = None) -> list[Any]:
    """Leaves ``[K, ...]`` -> a list of K pytrees (the inverse of ``stack_units``).

    ``num`` is K; it is needed only for a pytree without leaves (e.g. SGD's empty state).
    """
    num = jax.tree.leaves(stacked)[0].shape[0] if num is None else num
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(num)]
