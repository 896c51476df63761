"""The two built-in kinds of unit, as Flax NNX modules with the unit contract.

A *unit* is one step of the SID chain: ``unit(h, log_belief) -> (h_out,
logits)`` (``sidjax.network``). Any module that keeps this contract is a
unit; these two are the ones sidjax's builders compose:

* ``BeliefModule`` (shared trunk): a head on ``[p_{i-1}, z]`` that passes the
  features through unchanged (``h_out = h = z``).
* ``BlockUnit`` (blockwise): a block of backbone layers followed by a head
  on the block's output (``sidjax.heads``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from sidjax.heads import MLPHead


class BeliefModule(nnx.Module):
    """Shared-trunk unit ``f_i(p_{i-1}, z)``: ``Linear(d + N -> hidden) - ReLU - Linear(hidden -> N)``."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        hidden: int = 256,
        belief_input: str = "prob",
        *,
        rngs: nnx.Rngs,
    ):
        self.head = MLPHead((feature_dim,), num_classes, hidden, belief_input, rngs=rngs)

    def __call__(self, z: jax.Array, log_belief: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``z: [B, d]``, ``log_belief: [B, N]`` -> ``(z, logits [B, N])``."""
        return z, self.head(z, log_belief)


class BlockUnit(nnx.Module):
    """Blockwise unit: ``z_k = layers(h)``, ``logits_k = head(z_k, log p_{k-1})``.

    With ``probe`` the head reads ``z_k`` stopped: a read-out that never trains
    the block (the HSIC bottleneck's, ``sidjax.hsic.probe_heads``).
    """

    def __init__(self, layers: Sequence[nnx.Module], head: nnx.Module, probe: bool = False):
        self.layers = nnx.List(list(layers))
        self.head = head
        self.probe = probe

    def __call__(self, h: jax.Array, log_belief: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``h``: the previous block's output; -> ``(z_k, logits [B, N])``."""
        for layer in self.layers:
            h = layer(h)
        return h, self.head(jax.lax.stop_gradient(h) if self.probe else h, log_belief)
