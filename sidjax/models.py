"""Flax NNX layers: feature extractors and the SID belief module.

Images are NHWC. Every model here holds only ``nnx.Param`` variables, so
``nnx.split`` gives ``(graphdef, params)`` and the training engine
(``sidjax.network``) works on the params pytree alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.ops import ConvImpl, conv2d, max_pool


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


class SimpleCNN(nnx.Module):
    """The authors' feature extractor (SID_METHOD §1).

    conv 32, conv 64, max-pool 2; conv 128, conv 128, max-pool 2 (3x3, padding
    1, ReLU after each conv); global average pool; linear 128 -> feature_dim
    with no activation after it.
    """

    def __init__(
        self,
        in_channels: int,
        feature_dim: int = 128,
        widths: Sequence[int] = (32, 64, 128, 128),
        *,
        conv_impl: ConvImpl = "xla",
        rngs: nnx.Rngs,
    ):
        c1, c2, c3, c4 = widths
        self.convs = nnx.List(
            [
                Conv3x3(cin, cout, conv_impl=conv_impl, rngs=rngs)
                for cin, cout in ((in_channels, c1), (c1, c2), (c2, c3), (c3, c4))
            ]
        )
        self.head = nnx.Linear(c4, feature_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C] -> [B, feature_dim]``."""
        for i, conv in enumerate(self.convs):
            x = jax.nn.relu(conv(x))
            if i % 2 == 1:
                x = max_pool(x, 2)
        return self.head(x.mean(axis=(1, 2)))


class MLPExtractor(nnx.Module):
    """Flatten, ``Linear(in -> hidden) - ReLU - Linear(hidden -> feature_dim)``."""

    def __init__(self, in_features: int, feature_dim: int = 128, hidden: int = 512, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(in_features, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, feature_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, ...] -> [B, feature_dim]``."""
        return self.head(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


class BeliefModule(nnx.Module):
    """``f_i(p_{i-1}, z)``: ``Linear(N + d -> hidden) - ReLU - Linear(hidden -> N)``."""

    def __init__(self, feature_dim: int, num_classes: int, hidden: int = 256, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(num_classes + feature_dim, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, belief: jax.Array, z: jax.Array) -> jax.Array:
        """``belief: [B, N]``, ``z: [B, d]`` -> logits ``[B, N]``."""
        return self.out(jax.nn.relu(self.hidden(jnp.concatenate([belief, z], axis=-1))))


ExtractorFactory = Callable[..., nnx.Module]


def _simplecnn(input_shape, feature_dim, conv_impl, rngs):
    return SimpleCNN(input_shape[-1], feature_dim, conv_impl=conv_impl, rngs=rngs)


def _mlp(input_shape, feature_dim, conv_impl, rngs):
    del conv_impl
    in_features = 1
    for d in input_shape:
        in_features *= d
    return MLPExtractor(in_features, feature_dim, rngs=rngs)


# name -> factory(input_shape (H, W, C), feature_dim, conv_impl, rngs)
EXTRACTORS: dict[str, ExtractorFactory] = {"simplecnn": _simplecnn, "mlp": _mlp}
