"""A shared-trunk SID network as pure functions over a params pytree.

The network is a feature extractor ``c(x) -> z`` followed by ``num_modules``
identical belief modules whose params are stacked along a leading axis (one
vmapped init). NNX graphdefs are static; params are plain pytrees that cross
``jit``, ``vmap`` and ``scan``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.losses import uniform_log_belief
from sidjax.models import EXTRACTORS, BeliefModule
from sidjax.ops import ConvImpl


class SIDParams(NamedTuple):
    """Params of a shared-trunk network.

    Attributes:
      extractor: the extractor's ``nnx.State``.
      modules: the belief modules' ``nnx.State``, every leaf stacked
        ``[num_modules, ...]``.
    """

    extractor: Any
    modules: Any


@dataclasses.dataclass(frozen=True)
class SIDNetwork:
    """Static description of a network: graphdefs and sizes (hashable)."""

    extractor_def: nnx.GraphDef
    module_def: nnx.GraphDef
    num_modules: int
    num_classes: int
    feature_dim: int

    def extract(self, extractor_params: Any, x: chex.Array) -> chex.Array:
        """Features ``z``: ``x [B, H, W, C] -> [B, feature_dim]``."""
        return nnx.merge(self.extractor_def, extractor_params)(x)

    def module_logits(self, module_params: Any, log_belief: chex.Array, z: chex.Array) -> chex.Array:
        """One belief module: ``log p_{i-1} [B, N]``, ``z [B, d]`` -> logits ``[B, N]``."""
        return nnx.merge(self.module_def, module_params)(jnp.exp(log_belief), z)

    def chain(self, module_params: Any, z: chex.Array, *, cut: bool) -> tuple[chex.Array, chex.Array]:
        """Runs the belief chain from the uniform prior with a ``lax.scan``.

        Args:
          module_params: stacked module params, leaves ``[L, ...]``.
          z: features ``[B, d]``.
          cut: stop the gradient on each module's belief input (SID); with
            ``cut=False`` gradients flow along the chain (backprop).

        Returns:
          ``(logits, prev_log_beliefs)``, both ``[L, B, N]``: module i's
          logits and its input ``log p_{i-1}`` (row 0 is the uniform prior).
        """

        def body(log_belief, params_i):
            if cut:
                log_belief = jax.lax.stop_gradient(log_belief)
            logits = self.module_logits(params_i, log_belief, z)
            return jax.nn.log_softmax(logits), (logits, log_belief)

        prior = uniform_log_belief(z.shape[0], self.num_classes)
        _, (logits, prev) = jax.lax.scan(body, prior, module_params)
        chex.assert_shape(logits, (self.num_modules, z.shape[0], self.num_classes))
        return logits, prev

    def apply(self, params: SIDParams, x: chex.Array) -> chex.Array:
        """Inference: every module's logits ``[L, B, N]``; the prediction is row -1."""
        return self.chain(params.modules, self.extract(params.extractor, x), cut=False)[0]


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
) -> tuple[SIDNetwork, SIDParams]:
    """Builds a shared-trunk network and initial params.

    Args:
      model: extractor name, a key of ``sidjax.models.EXTRACTORS``.
      input_shape: one example's shape ``(H, W, C)``.
      num_classes: N.
      num_modules: L >= 1 belief modules.
      key: PRNG key; the extractor and each module get their own fold.
      feature_dim: d, the extractor's output width.
      module_hidden: hidden width of each belief module.
      conv_impl: convolution backward implementation (``sidjax.ops``).

    Returns:
      ``(network, params)``.
    """
    if model not in EXTRACTORS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(EXTRACTORS)}")
    if num_modules < 1:
        raise ValueError(f"num_modules must be >= 1, got {num_modules}")
    extractor_key, modules_key = jax.random.split(key)

    extractor_def, extractor_params = nnx.split(
        EXTRACTORS[model](input_shape, feature_dim, conv_impl, nnx.Rngs(params=extractor_key))
    )

    def new_module(k):
        return BeliefModule(feature_dim, num_classes, module_hidden, rngs=nnx.Rngs(params=k))

    module_def = nnx.split(nnx.eval_shape(lambda: new_module(jax.random.key(0))))[0]
    module_params = jax.vmap(lambda k: nnx.split(new_module(k))[1])(
        jax.random.split(modules_key, num_modules)
    )
    network = SIDNetwork(extractor_def, module_def, num_modules, num_classes, feature_dim)
    return network, SIDParams(extractor_params, module_params)


def unstack_modules(module_params: Any) -> list[Any]:
    """Stacked module params ``[L, ...]`` -> a list of L per-module pytrees."""
    num = jax.tree.leaves(module_params)[0].shape[0]
    return [jax.tree.map(lambda a, i=i: a[i], module_params) for i in range(num)]
