"""The HSIC bottleneck (Ma, Lewis & Kleijn 2020): each unit keeps little of the input and much of the label.

On a blockwise network, unit k's block output ``Z_k`` (flattened; its input
is the previous block's output, stopped) minimises, on the batch,

    nHSIC(Z_k, X) - beta * nHSIC(Z_k, Y)

with ``X`` the flattened batch and ``Y`` the one-hot labels. The estimator
is the authors' normalised one: Gaussian kernels ``exp(-|a - b|^2 / (2
sigma^2 d))`` (``d`` the dimension of what is compared), centred on one side
(``K_c = K H``, ``H = I - 11^T / m``), ``R = K_c (K_c + eps m I)^{-1}`` and
``nHSIC(A, B) = sum(R_A * R_B^T)``, with ``eps = 1e-5``; it costs
``O(m^2)`` memory and an ``m x m`` solve per unit for a batch of m (``solve``:
one seed at a time when seeds train together).

Defaults from the authors' code (``config/general-hsicbt.yaml``):
``sigma = 5``, ``beta = 50`` (their ``lambda_y``, with ``lambda_x = 1``),
batch 512. Every unit's head is a read-out that learns at the same time
by cross-entropy on its block's *stopped* output (``probe_heads``), so it
never changes a block; the prediction is the last head's. The authors
instead train a fresh output layer after the HSIC phase, on the frozen
network ("post-training"): the ``readout`` method started from this run
(``init_from``) does that (``sidjax.readout``).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.adapt import remodel
from sidjax.errors import ConfigError
from sidjax.methods._record import LocalMethod
from sidjax.network import Network, Variables
from sidjax.units import UnitSeen

SIGMA = 5.0
BETA = 50.0
EPSILON = 1e-5


def centred_kernel(a: chex.Array, sigma: float = SIGMA) -> chex.Array:
    """``[m, m]``: the Gaussian kernel of the rows of ``a [m, ...]`` (width ``sigma`` per dimension), times ``H``."""
    a = a.reshape(a.shape[0], -1)
    sq = jnp.sum(a * a, axis=1)
    distances = jnp.abs(sq[:, None] - 2 * a @ a.T + sq[None, :])
    kernel = jnp.exp(-distances / (2 * sigma**2 * a.shape[1]))
    m = a.shape[0]
    return kernel @ (jnp.eye(m) - jnp.ones((m, m)) / m)


def normalised_projection(kernel: chex.Array) -> chex.Array:
    """``R = K_c (K_c + eps m I)^{-1}`` of a centred kernel ``[m, m]``, computed as the equal
    ``(K_c + eps m I)^{-1} K_c`` (the two factors commute): one LU factorisation, no inverse."""
    m = kernel.shape[0]
    return solve(kernel + EPSILON * m * jnp.eye(m), kernel)


@jax.custom_batching.sequential_vmap
def _lu_factor(a: chex.Array) -> tuple[chex.Array, chex.Array]:
    return jax.scipy.linalg.lu_factor(a)


@jax.custom_batching.sequential_vmap
def _lu_solve(lu: chex.Array, pivots: chex.Array, b: chex.Array) -> chex.Array:
    return jax.scipy.linalg.lu_solve((lu, pivots), b)


@jax.custom_batching.sequential_vmap
def _lu_solve_transposed(lu: chex.Array, pivots: chex.Array, b: chex.Array) -> chex.Array:
    return jax.scipy.linalg.lu_solve((lu, pivots), b, trans=1)


@jax.custom_vjp
def solve(a: chex.Array, b: chex.Array) -> chex.Array:
    """``a^{-1} b`` for ``a [m, m]``, ``b [m, n]``, like ``jnp.linalg.solve``, but batched (seeds trained
    together, ``jax.jacrev``) as a loop of unbatched solves.

    XLA:CPU runs a batched LU factorisation on its thread pool and waits for it there; several such
    factorisations at once (one per unit) can take every thread of a small machine and wait forever
    (seen on 2 cores). One unbatched solve at a time cannot.
    """
    return _lu_solve(*_lu_factor(a), b)


def _solve_forward(a, b):
    lu, pivots = _lu_factor(a)
    x = _lu_solve(lu, pivots, b)
    return x, (lu, pivots, x)


def _solve_backward(residuals, g):
    lu, pivots, x = residuals
    b_bar = _lu_solve_transposed(lu, pivots, g)
    return -b_bar @ x.T, b_bar


solve.defvjp(_solve_forward, _solve_backward)


def nhsic(a: chex.Array, b: chex.Array, sigma: float = SIGMA) -> chex.Array:
    """The normalised HSIC of ``a [m, ...]`` and ``b [m, ...]`` (a scalar)."""
    return _nhsic(
        normalised_projection(centred_kernel(a, sigma)), normalised_projection(centred_kernel(b, sigma))
    )


def _nhsic(ra: chex.Array, rb: chex.Array) -> chex.Array:
    return jnp.sum(ra * rb.T)


def make_give_kernels(sigma: float = SIGMA):
    """``give(network, x, labels, key) -> (x, (R_X, R_Y))``: the normalised kernels of the batch (stopped)
    and of the one-hot labels, computed once per step and given to every unit."""

    def give(network: Network, x: chex.Array, labels: chex.Array, key) -> tuple[chex.Array, tuple]:
        rx = jax.lax.stop_gradient(normalised_projection(centred_kernel(x, sigma)))
        ry = normalised_projection(centred_kernel(jax.nn.one_hot(labels, network.num_classes), sigma))
        return x, (rx, ry)

    return give


def make_hsic_loss(sigma: float = SIGMA, beta: float = BETA):
    """Unit k's loss: its block output's HSIC bottleneck plus its read-out head's cross-entropy."""

    def unit_loss(seen: UnitSeen) -> tuple[chex.Array, chex.Array]:
        """``nHSIC(Z, X) - beta nHSIC(Z, Y) + CE(y, head(sg(Z)))``; the head is a read-out (``probe_heads``)."""
        rx, ry = seen.input.given
        rz = normalised_projection(centred_kernel(seen.output, sigma))
        ce = optax.softmax_cross_entropy_with_integer_labels(seen.logits, seen.input.labels).mean()
        return _nhsic(rz, rx) - beta * _nhsic(rz, ry) + ce, seen.logits

    return unit_loss


def hsic_bottleneck(name: str = "hsic", sigma: float = SIGMA, beta: float = BETA) -> LocalMethod:
    """The HSIC bottleneck as a ``LocalMethod`` with kernel width ``sigma`` and label weight ``beta``."""
    return LocalMethod(
        name=name,
        summary="HSIC bottleneck: each unit keeps little of the input and much of the label; read-out heads",
        unit_loss=make_hsic_loss(sigma, beta), give=make_give_kernels(sigma), modes=("blockwise",),
        belief_input="none", prepare=probe_heads,
    )  # fmt: skip


def probe_heads(network: Network, variables: Variables, key: chex.PRNGKey) -> tuple[Network, Variables]:
    """Every unit's head reads its block's output stopped (a read-out that does not train the block)."""
    if not network.cut_features:
        raise ConfigError("this method trains blockwise networks (mode 'blockwise')", "mode")
    missing = []

    def change(module, part_key, index):
        if index < network.num_units:
            if not hasattr(module, "probe"):
                missing.append(type(module).__name__)
            module.probe = True

    network, variables = remodel(network, variables, change, key)
    if missing:
        raise ConfigError(
            f"read-out heads need units built by sidjax.blockwise (BlockUnit), got {missing[0]}", "model"
        )
    return network, variables


HSIC = hsic_bottleneck()
