"""The floor of a comparison cell: a linear softmax classifier on the pixels.

A method that does not beat what a linear read-out of the input reaches has
not learned anything its network adds; its cell tells nothing about it.
``linear`` is that classifier as one blockwise unit (a flatten, then one
``nnx.Linear`` to the classes), trained by backprop (``--method bp``) with
the cell's own recipe and learning-rate grid.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

import sidjax


class Flatten(nnx.Module):
    """``[B, H, W, C] -> [B, H * W * C]``; no parameters."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1)


class Linear(nnx.Module):
    """``Linear(D -> N)`` on the flattened input; reads no belief."""

    def __init__(self, dim: int, num_classes: int, rngs: nnx.Rngs):
        self.out = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, h: jax.Array, log_belief: jax.Array) -> jax.Array:
        del log_belief
        return self.out(h)


def linear(
    key: jax.Array, num_classes: int = 10, input_shape: tuple[int, ...] = (28, 28, 1)
) -> tuple[sidjax.Network, sidjax.Variables]:
    """A linear softmax classifier on ``input_shape`` images (Fashion-MNIST's by default), as one unit."""
    rngs = nnx.Rngs(key)
    head = Linear(math.prod(input_shape), num_classes, rngs)
    return sidjax.blockwise([Flatten()], num_classes=num_classes, input_shape=input_shape, rngs=rngs,
                            heads=[head], belief_input="none", name="linear")  # fmt: skip
