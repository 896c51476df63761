"""How many training steps one compiled chunk runs: decided from the network and the backend."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sidjax.network import Network


def has_convolution(network: Network, variables: Any) -> bool:
    """Whether the network's forward pass contains a convolution (traced, not run)."""
    x = jax.ShapeDtypeStruct((1, *network.input_shape), jnp.float32)
    jaxpr = jax.make_jaxpr(network.apply)(variables, x)

    def walk(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                return True
            subs = [v.jaxpr if hasattr(v, "jaxpr") else v for v in eqn.params.values()]
            if any(walk(j) for j in subs if hasattr(j, "eqns")):
                return True
        return False

    return walk(jaxpr.jaxpr)


def auto_chunk(steps: int, cpu_convolutions: bool, most: int = 64) -> int:
    """Steps per chunk: the largest divisor of ``steps`` up to ``most`` (equal chunks, one compile).

    1 for ``cpu_convolutions``: XLA:CPU runs a convolution's weight gradient
    far slower inside a loop (``lax.scan``, ``fori_loop``) than outside one,
    so a convolutional network's chunk there is one step without a loop; a
    dispatch per step costs nothing next to a CPU step. Dense networks scan.
    """
    if cpu_convolutions:
        return 1
    return max(d for d in range(1, min(steps, most) + 1) if steps % d == 0)
