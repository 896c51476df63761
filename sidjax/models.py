"""Flax NNX layers shared by every architecture: the conv layer and the two kinds of unit.

A *unit* is one step of the SID chain: ``unit(h, belief) -> (h_out, logits)``.

* ``BeliefModule`` (shared trunk): reads ``[p_{i-1}, z]`` and passes the
  features through unchanged (``h_out = h = z``).
* ``BlockUnit`` (blockwise): a block of backbone layers followed by a
  ``BeliefHead`` on ``[pool(z_k), p_{k-1}]`` (or ``pool(z_k)`` alone for DGL).

Every model holds only ``nnx.Param`` variables, so ``nnx.split`` gives
``(graphdef, params)`` and the engine (``sidjax.network``) works on params.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.ops import ConvImpl, conv2d


def pool_features(h: jax.Array) -> jax.Array:
    """Global average pool to ``[B, C]``: over space (NHWC), tokens (BTD) or nothing (BC)."""
    return h if h.ndim == 2 else h.mean(axis=tuple(range(1, h.ndim - 1)))


class Conv3x3(nnx.Module):
    """3x3 'SAME' convolution with bias; the backward pass follows ``conv_impl``."""

    def __init__(self, in_channels: int, out_channels: int, *, conv_impl: ConvImpl, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (3, 3, in_channels, out_channels)))
        self.bias = nnx.Param(jnp.zeros((out_channels,)))
        self.conv_impl = conv_impl

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C_in] -> [B, H, W, C_out]``."""
        return conv2d(x, self.kernel[...], self.conv_impl) + self.bias[...]


class BeliefHead(nnx.Module):
    """Blockwise head ``h_k``: MLP on ``[p_{k-1}, pool(z_k)]`` (``pool(z_k)`` alone for DGL)."""

    def __init__(
        self, in_features: int, num_classes: int, hidden: int, belief_input: bool, *, rngs: nnx.Rngs
    ):
        extra = num_classes if belief_input else 0
        self.hidden = nnx.Linear(in_features + extra, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)
        self.belief_input = belief_input

    def __call__(self, pooled: jax.Array, belief: jax.Array) -> jax.Array:
        """``pooled: [B, C]``, ``belief: [B, N]`` -> logits ``[B, N]``."""
        inputs = jnp.concatenate([belief, pooled], axis=-1) if self.belief_input else pooled
        return self.out(jax.nn.relu(self.hidden(inputs)))


class BeliefModule(nnx.Module):
    """Shared-trunk unit ``f_i(p_{i-1}, z)``: a ``BeliefHead`` on ``[p_{i-1}, z]`` that passes ``z`` on."""

    def __init__(self, feature_dim: int, num_classes: int, hidden: int = 256, *, rngs: nnx.Rngs):
        self.head = BeliefHead(feature_dim, num_classes, hidden, belief_input=True, rngs=rngs)

    def __call__(self, z: jax.Array, belief: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``z: [B, d]``, ``belief: [B, N]`` -> ``(z, logits [B, N])``."""
        return z, self.head(z, belief)


class BlockUnit(nnx.Module):
    """Blockwise unit: ``z_k = block(h)``, ``logits_k = head(pool(z_k), p_{k-1})``."""

    def __init__(self, layers: list[nnx.Module], head: BeliefHead):
        self.layers = nnx.List(layers)
        self.head = head

    def __call__(self, h: jax.Array, belief: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``h``: the previous block's output; -> ``(z_k, logits [B, N])``."""
        for layer in self.layers:
            h = layer(h)
        return h, self.head(pool_features(h), belief)
