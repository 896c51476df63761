"""Belief heads: how a unit turns its block's output and the previous belief into logits.

A head is any NNX module ``head(h, log_belief) -> logits [B, N]`` where ``h``
is the block's output (``[B, H, W, C]`` feature maps, ``[B, T, D]`` tokens or
``[B, D]`` vectors) and ``log_belief`` is ``log p_{k-1}`` ``[B, N]``. Three are
built in (``HEADS``), each reading the belief as probabilities (``"prob"``,
the authors' form), as log-probabilities (``"log"``) or not at all
(``"none"``, DGL's heads):

* ``"mlp"``: global average pool, then an MLP (one hidden layer) on
  ``[belief, pooled]``; the authors' belief module, and the cheapest.
* ``"dgl"``: a 1x1 convolution and ReLU, average pool to 2x2, then the MLP on
  ``[belief, flattened 2x2 map]`` (the auxiliary head of Belilovsky et al.'s
  decoupled greedy learning, which keeps coarse spatial detail).
* ``"infopro"``: a strided 3x3 convolution and ReLU, global average pool,
  then one linear layer on ``[belief, pooled]`` (the head style of InfoPro,
  Wang et al. 2021).

``"dgl"`` and ``"infopro"`` need feature maps; on tokens or vectors they
refuse with a message naming ``"mlp"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.errors import ConfigError

BELIEF_INPUTS: tuple[str, ...] = ("prob", "log", "none")


def pool_features(h: jax.Array) -> jax.Array:
    """Global average pool to ``[B, C]``: over space (NHWC), tokens (BTD) or nothing (BC)."""
    return h if h.ndim == 2 else h.mean(axis=tuple(range(1, h.ndim - 1)))


def adaptive_avg_pool(h: jax.Array, size: int) -> jax.Array:
    """``[B, H, W, C] -> [B, size, size, C]``: bin i covers rows ``floor(i H / size) .. ceil((i + 1) H / size)``."""
    _, height, width, _ = h.shape

    def bins(n):
        return [(math.floor(i * n / size), math.ceil((i + 1) * n / size)) for i in range(size)]

    rows = [jnp.stack([h[:, a:b, c:d].mean(axis=(1, 2)) for c, d in bins(width)], 1) for a, b in bins(height)]
    return jnp.stack(rows, 1)


def _with_belief(features: jax.Array, log_belief: jax.Array, belief_input: str) -> jax.Array:
    if belief_input == "none":
        return features
    belief = jnp.exp(log_belief) if belief_input == "prob" else log_belief
    return jnp.concatenate([belief, features], axis=-1)


def check_belief_input(belief_input: str) -> None:
    """``belief_input`` is one of ``BELIEF_INPUTS`` (``ConfigError`` naming it otherwise)."""
    if belief_input not in BELIEF_INPUTS:
        raise ConfigError(
            f"belief_input must be one of {BELIEF_INPUTS}, got {belief_input!r}", "belief_input"
        )


def _check(belief_input: str) -> int:
    check_belief_input(belief_input)
    return 0 if belief_input == "none" else 1


def _feature_maps(name: str, feature_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(feature_shape) != 3:
        raise ConfigError(
            f"head {name!r} needs [H, W, C] feature maps; this block outputs {tuple(feature_shape)}: use head 'mlp'",
            "head",
        )
    return feature_shape


class MLPHead(nnx.Module):
    """Pool, then ``Linear(hidden) - ReLU - Linear(N)`` on ``[belief, pooled]``."""

    def __init__(
        self, feature_shape, num_classes: int, hidden: int = 256, belief_input: str = "prob", *, rngs
    ):
        extra = num_classes * _check(belief_input)
        self.hidden = nnx.Linear(feature_shape[-1] + extra, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)
        self.belief_input = belief_input

    def __call__(self, h: jax.Array, log_belief: jax.Array) -> jax.Array:
        """``h: [B, ..., C]``, ``log_belief: [B, N]`` -> logits ``[B, N]``."""
        inputs = _with_belief(pool_features(h), log_belief, self.belief_input)
        return self.out(jax.nn.relu(self.hidden(inputs)))


class DGLHead(nnx.Module):
    """1x1 conv + ReLU, average pool to 2x2, then the MLP on ``[belief, flattened map]``."""

    def __init__(
        self, feature_shape, num_classes: int, hidden: int = 256, belief_input: str = "prob", *, rngs
    ):
        _, _, channels = _feature_maps("dgl", feature_shape)
        extra = num_classes * _check(belief_input)
        self.conv = nnx.Conv(channels, channels, (1, 1), rngs=rngs)
        self.hidden = nnx.Linear(4 * channels + extra, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)
        self.belief_input = belief_input

    def __call__(self, h: jax.Array, log_belief: jax.Array) -> jax.Array:
        """``h: [B, H, W, C]``, ``log_belief: [B, N]`` -> logits ``[B, N]``."""
        pooled = adaptive_avg_pool(jax.nn.relu(self.conv(h)), 2)
        inputs = _with_belief(pooled.reshape(h.shape[0], -1), log_belief, self.belief_input)
        return self.out(jax.nn.relu(self.hidden(inputs)))


class InfoProHead(nnx.Module):
    """Strided 3x3 conv + ReLU, global average pool, then one linear layer on ``[belief, pooled]``."""

    def __init__(
        self, feature_shape, num_classes: int, hidden: int = 256, belief_input: str = "prob", *, rngs
    ):
        del hidden  # one linear layer
        _, _, channels = _feature_maps("infopro", feature_shape)
        extra = num_classes * _check(belief_input)
        self.conv = nnx.Conv(channels, channels, (3, 3), strides=2, rngs=rngs)
        self.out = nnx.Linear(channels + extra, num_classes, rngs=rngs)
        self.belief_input = belief_input

    def __call__(self, h: jax.Array, log_belief: jax.Array) -> jax.Array:
        """``h: [B, H, W, C]``, ``log_belief: [B, N]`` -> logits ``[B, N]``."""
        pooled = pool_features(jax.nn.relu(self.conv(h)))
        return self.out(_with_belief(pooled, log_belief, self.belief_input))


# name -> head(feature_shape (one example's block output), num_classes, hidden, belief_input, *, rngs)
HEADS: dict[str, Callable[..., nnx.Module]] = {"mlp": MLPHead, "dgl": DGLHead, "infopro": InfoProHead}
